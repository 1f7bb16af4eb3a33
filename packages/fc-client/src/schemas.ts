// PROVISIONAL (written by the launcher helper so the package builds; the API-client helper owns this
// file and replaces it with schemas for every definition of the v1.16.1 spec).
import { z } from "zod";

const tokenBucketSchema = z.strictObject({
  size: z.number().int().nonnegative(),
  one_time_burst: z.number().int().nonnegative().nullish(),
  refill_time: z.number().int().nonnegative(),
});
export const rateLimiterSchema = z.strictObject({
  bandwidth: tokenBucketSchema.nullish(),
  ops: tokenBucketSchema.nullish(),
});

export const bootSourceSchema = z.strictObject({
  kernel_image_path: z.string(),
  boot_args: z.string().nullish(),
  initrd_path: z.string().nullish(),
});
export type BootSource = z.infer<typeof bootSourceSchema>;

export const machineConfigurationSchema = z.strictObject({
  vcpu_count: z.number().int().min(1).max(32),
  mem_size_mib: z.number().int().positive(),
  smt: z.boolean().optional(),
  track_dirty_pages: z.boolean().optional(),
  cpu_template: z.string().nullish(),
  huge_pages: z.enum(["None", "2M"]).optional(),
});
export type MachineConfiguration = z.infer<typeof machineConfigurationSchema>;

export const cpuConfigSchema = z.strictObject({
  kvm_capabilities: z.array(z.string()).optional(),
  cpuid_modifiers: z.array(z.unknown()).optional(),
  msr_modifiers: z.array(z.unknown()).optional(),
  reg_modifiers: z.array(z.unknown()).optional(),
  vcpu_features: z.array(z.unknown()).optional(),
});
export type CpuConfig = z.infer<typeof cpuConfigSchema>;

export const driveSchema = z.strictObject({
  drive_id: z.string(),
  partuuid: z.string().nullish(),
  is_root_device: z.boolean(),
  cache_type: z.enum(["Unsafe", "Writeback"]).optional(),
  is_read_only: z.boolean().nullish(),
  path_on_host: z.string().nullish(),
  rate_limiter: rateLimiterSchema.nullish(),
  io_engine: z.enum(["Sync", "Async"]).optional(),
  socket: z.string().nullish(),
});
export type Drive = z.infer<typeof driveSchema>;

export const pmemSchema = z.strictObject({
  id: z.string(),
  path_on_host: z.string(),
  root_device: z.boolean().optional(),
  read_only: z.boolean().optional(),
  rate_limiter: rateLimiterSchema.nullish(),
});
export type Pmem = z.infer<typeof pmemSchema>;

export const networkInterfaceSchema = z.strictObject({
  iface_id: z.string(),
  host_dev_name: z.string(),
  guest_mac: z.string().nullish(),
  mtu: z.number().int().nullish(),
  rx_rate_limiter: rateLimiterSchema.nullish(),
  tx_rate_limiter: rateLimiterSchema.nullish(),
});
export type NetworkInterface = z.infer<typeof networkInterfaceSchema>;

export const vsockSchema = z.strictObject({
  guest_cid: z.number().int().min(3),
  uds_path: z.string(),
  vsock_id: z.string().optional(),
});
export type Vsock = z.infer<typeof vsockSchema>;

export const balloonSchema = z.strictObject({
  amount_mib: z.number().int().nonnegative(),
  deflate_on_oom: z.boolean(),
  stats_polling_interval_s: z.number().int().nonnegative().optional(),
  free_page_hinting: z.boolean().optional(),
  free_page_reporting: z.boolean().optional(),
});
export type Balloon = z.infer<typeof balloonSchema>;

export const entropyDeviceSchema = z.strictObject({ rate_limiter: rateLimiterSchema.nullish() });
export type EntropyDevice = z.infer<typeof entropyDeviceSchema>;

export const memoryHotplugConfigSchema = z.strictObject({
  total_size_mib: z.number().int().nonnegative().optional(),
  slot_size_mib: z.number().int().positive().optional(),
  block_size_mib: z.number().int().positive().optional(),
});
export type MemoryHotplugConfig = z.infer<typeof memoryHotplugConfigSchema>;

export const loggerSchema = z.strictObject({
  level: z.enum(["Error", "Warning", "Info", "Debug", "Trace", "Off"]).optional(),
  log_path: z.string().optional(),
  show_level: z.boolean().optional(),
  show_log_origin: z.boolean().optional(),
  module: z.string().optional(),
});
export type LoggerConfig = z.infer<typeof loggerSchema>;

export const metricsSchema = z.strictObject({ metrics_path: z.string() });
export type MetricsConfig = z.infer<typeof metricsSchema>;

export const mmdsConfigSchema = z.strictObject({
  version: z.enum(["V1", "V2"]).optional(),
  network_interfaces: z.array(z.string()),
  ipv4_address: z.string().optional(),
  imds_compat: z.boolean().optional(),
});
export type MmdsConfig = z.infer<typeof mmdsConfigSchema>;

/** The `--config-file` / `GET /vm/config` document. */
export const fullVmConfigurationSchema = z.strictObject({
  balloon: balloonSchema.nullish(),
  drives: z.array(driveSchema).optional(),
  "boot-source": bootSourceSchema.nullish(),
  "cpu-config": cpuConfigSchema.nullish(),
  logger: loggerSchema.nullish(),
  "machine-config": machineConfigurationSchema.nullish(),
  metrics: metricsSchema.nullish(),
  "memory-hotplug": memoryHotplugConfigSchema.nullish(),
  "mmds-config": mmdsConfigSchema.nullish(),
  "network-interfaces": z.array(networkInterfaceSchema).optional(),
  pmem: z.array(pmemSchema).optional(),
  vsock: vsockSchema.nullish(),
  entropy: entropyDeviceSchema.nullish(),
});
export type FullVmConfiguration = z.infer<typeof fullVmConfigurationSchema>;

export const instanceInfoSchema = z.looseObject({
  app_name: z.string(),
  id: z.string(),
  state: z.enum(["Not started", "Running", "Paused"]),
  vmm_version: z.string(),
});
export type InstanceInfo = z.infer<typeof instanceInfoSchema>;

export const instanceActionInfoSchema = z.strictObject({
  action_type: z.enum(["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]),
});
export type InstanceActionInfo = z.infer<typeof instanceActionInfoSchema>;

export const vmSchema = z.strictObject({ state: z.enum(["Paused", "Resumed"]) });
export type Vm = z.infer<typeof vmSchema>;

export const snapshotCreateParamsSchema = z.strictObject({
  mem_file_path: z.string(),
  snapshot_path: z.string(),
  snapshot_type: z.enum(["Full", "Diff"]).optional(),
});
export type SnapshotCreateParams = z.infer<typeof snapshotCreateParamsSchema>;

export const snapshotLoadParamsSchema = z.strictObject({
  enable_diff_snapshots: z.boolean().optional(),
  track_dirty_pages: z.boolean().optional(),
  mem_file_path: z.string().optional(),
  mem_backend: z
    .strictObject({ backend_type: z.enum(["File", "Uffd"]), backend_path: z.string() })
    .optional(),
  snapshot_path: z.string(),
  resume_vm: z.boolean().optional(),
  network_overrides: z.array(z.strictObject({ iface_id: z.string(), host_dev_name: z.string() })).optional(),
  vsock_override: z.strictObject({ uds_path: z.string() }).optional(),
  clock_realtime: z.boolean().optional(),
});
export type SnapshotLoadParams = z.infer<typeof snapshotLoadParamsSchema>;
