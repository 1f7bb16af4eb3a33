// zod schemas for every definition of Firecracker's API spec (v1.16.1), written by hand from the spec so
// they read like the spec; a test walks the spec files and fails when a definition, a field, a required
// marker or an enum value here drifts from them.
//
// Request objects are strict because Firecracker deserializes with `deny_unknown_fields`: a typo fails
// here, with its path, before anything is sent. Optional fields also accept `null`, as Firecracker's own
// config files and `GET /vm/config` use it for "not set" (serde `Option`).
import { STATIC_CPU_TEMPLATE_NAMES } from "@sbx/arch";
import { z } from "zod";

const int = () => z.number().int();
const uint = () => z.number().int().min(0);

export const tokenBucketSchema = z.strictObject({
  size: uint(),
  one_time_burst: uint().nullish(),
  refill_time: uint(),
});
export type TokenBucket = z.infer<typeof tokenBucketSchema>;

export const rateLimiterSchema = z.strictObject({
  bandwidth: tokenBucketSchema.nullish(),
  ops: tokenBucketSchema.nullish(),
});
export type RateLimiter = z.infer<typeof rateLimiterSchema>;

export const errorSchema = z.looseObject({ fault_message: z.string().optional() });
export type FirecrackerFault = z.infer<typeof errorSchema>;

export const instanceInfoSchema = z.strictObject({
  app_name: z.string(),
  id: z.string(),
  state: z.enum(["Not started", "Running", "Paused"]),
  vmm_version: z.string(),
});
export type InstanceInfo = z.infer<typeof instanceInfoSchema>;

export const firecrackerVersionSchema = z.strictObject({ firecracker_version: z.string() });
export type FirecrackerVersion = z.infer<typeof firecrackerVersionSchema>;

export const instanceActionInfoSchema = z.strictObject({
  action_type: z.enum(["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]),
});
export type InstanceActionInfo = z.infer<typeof instanceActionInfoSchema>;

export const bootSourceSchema = z.strictObject({
  kernel_image_path: z.string(),
  boot_args: z.string().nullish(),
  initrd_path: z.string().nullish(),
});
export type BootSource = z.infer<typeof bootSourceSchema>;

/**
 * `machine-config.cpu_template` (the spec's `CpuTemplate`): a static CPU template name, of either arch, or
 * "None". Custom templates are a different thing: `@sbx/cpu-template`'s `CustomCpuTemplate`.
 */
export const machineCpuTemplateSchema = z.enum([...STATIC_CPU_TEMPLATE_NAMES, "None"]);
/** A static CPU template name or "None", as `machine-config.cpu_template` takes it. */
export type MachineCpuTemplate = z.infer<typeof machineCpuTemplateSchema>;

export const machineConfigurationSchema = z.strictObject({
  vcpu_count: int().min(1).max(32),
  mem_size_mib: int(),
  smt: z.boolean().nullish(),
  track_dirty_pages: z.boolean().nullish(),
  cpu_template: machineCpuTemplateSchema.nullish(),
  huge_pages: z.enum(["None", "2M"]).nullish(),
});
export type MachineConfiguration = z.infer<typeof machineConfigurationSchema>;

export const cpuidRegisterModifierSchema = z.strictObject({
  register: z.enum(["eax", "ebx", "ecx", "edx"]),
  bitmap: z.string(),
});
export type CpuidRegisterModifier = z.infer<typeof cpuidRegisterModifierSchema>;

export const cpuidLeafModifierSchema = z.strictObject({
  leaf: z.string(),
  subleaf: z.string(),
  flags: int(),
  modifiers: z.array(cpuidRegisterModifierSchema),
});
export type CpuidLeafModifier = z.infer<typeof cpuidLeafModifierSchema>;

export const msrModifierSchema = z.strictObject({ addr: z.string(), bitmap: z.string() });
export type MsrModifier = z.infer<typeof msrModifierSchema>;

export const armRegisterModifierSchema = z.strictObject({ addr: z.string(), bitmap: z.string() });
export type ArmRegisterModifier = z.infer<typeof armRegisterModifierSchema>;

export const vcpuFeaturesSchema = z.strictObject({ index: int(), bitmap: z.string() });
export type VcpuFeatures = z.infer<typeof vcpuFeaturesSchema>;

/** A custom CPU template (`PUT /cpu-config`): cpuid/msr modifiers on x86_64, reg/vcpu features on aarch64. */
export const cpuConfigSchema = z.strictObject({
  kvm_capabilities: z.array(z.string()).nullish(),
  cpuid_modifiers: z.array(cpuidLeafModifierSchema).nullish(),
  msr_modifiers: z.array(msrModifierSchema).nullish(),
  reg_modifiers: z.array(armRegisterModifierSchema).nullish(),
  vcpu_features: z.array(vcpuFeaturesSchema).nullish(),
});
export type CpuConfig = z.infer<typeof cpuConfigSchema>;

export const driveSchema = z.strictObject({
  drive_id: z.string(),
  partuuid: z.string().nullish(),
  is_root_device: z.boolean(),
  cache_type: z.enum(["Unsafe", "Writeback"]).nullish(),
  is_read_only: z.boolean().nullish(),
  path_on_host: z.string().nullish(),
  rate_limiter: rateLimiterSchema.nullish(),
  io_engine: z.enum(["Sync", "Async"]).nullish(),
  socket: z.string().nullish(),
});
export type Drive = z.infer<typeof driveSchema>;

export const partialDriveSchema = z.strictObject({
  drive_id: z.string(),
  path_on_host: z.string().nullish(),
  rate_limiter: rateLimiterSchema.nullish(),
});
export type PartialDrive = z.infer<typeof partialDriveSchema>;

export const pmemSchema = z.strictObject({
  id: z.string(),
  path_on_host: z.string(),
  root_device: z.boolean().nullish(),
  read_only: z.boolean().nullish(),
  rate_limiter: rateLimiterSchema.nullish(),
});
export type Pmem = z.infer<typeof pmemSchema>;

export const partialPmemSchema = z.strictObject({
  id: z.string(),
  rate_limiter: rateLimiterSchema.nullish(),
});
export type PartialPmem = z.infer<typeof partialPmemSchema>;

export const networkInterfaceSchema = z.strictObject({
  iface_id: z.string(),
  host_dev_name: z.string(),
  guest_mac: z.string().nullish(),
  mtu: int().min(68).max(65535).nullish(),
  rx_rate_limiter: rateLimiterSchema.nullish(),
  tx_rate_limiter: rateLimiterSchema.nullish(),
});
export type NetworkInterface = z.infer<typeof networkInterfaceSchema>;

export const partialNetworkInterfaceSchema = z.strictObject({
  iface_id: z.string(),
  rx_rate_limiter: rateLimiterSchema.nullish(),
  tx_rate_limiter: rateLimiterSchema.nullish(),
});
export type PartialNetworkInterface = z.infer<typeof partialNetworkInterfaceSchema>;

export const vsockSchema = z.strictObject({
  guest_cid: int().min(3),
  uds_path: z.string(),
  vsock_id: z.string().nullish(),
});
export type Vsock = z.infer<typeof vsockSchema>;

export const balloonSchema = z.strictObject({
  amount_mib: int(),
  deflate_on_oom: z.boolean(),
  stats_polling_interval_s: int().nullish(),
  free_page_hinting: z.boolean().nullish(),
  free_page_reporting: z.boolean().nullish(),
});
export type Balloon = z.infer<typeof balloonSchema>;

export const balloonUpdateSchema = z.strictObject({ amount_mib: int() });
export type BalloonUpdate = z.infer<typeof balloonUpdateSchema>;

export const balloonStatsUpdateSchema = z.strictObject({ stats_polling_interval_s: int() });
export type BalloonStatsUpdate = z.infer<typeof balloonStatsUpdateSchema>;

export const balloonStatsSchema = z.strictObject({
  target_pages: int(),
  actual_pages: int(),
  target_mib: int(),
  actual_mib: int(),
  swap_in: int().nullish(),
  swap_out: int().nullish(),
  major_faults: int().nullish(),
  minor_faults: int().nullish(),
  free_memory: int().nullish(),
  total_memory: int().nullish(),
  available_memory: int().nullish(),
  disk_caches: int().nullish(),
  hugetlb_allocations: int().nullish(),
  hugetlb_failures: int().nullish(),
  oom_kill: int().nullish(),
  alloc_stall: int().nullish(),
  async_scan: int().nullish(),
  direct_scan: int().nullish(),
  async_reclaim: int().nullish(),
  direct_reclaim: int().nullish(),
});
export type BalloonStats = z.infer<typeof balloonStatsSchema>;

export const balloonStartCmdSchema = z.strictObject({ acknowledge_on_stop: z.boolean().nullish() });
export type BalloonStartCmd = z.infer<typeof balloonStartCmdSchema>;

export const balloonHintingStatusSchema = z.strictObject({
  host_cmd: int(),
  guest_cmd: int().nullish(),
});
export type BalloonHintingStatus = z.infer<typeof balloonHintingStatusSchema>;

export const entropyDeviceSchema = z.strictObject({ rate_limiter: rateLimiterSchema.nullish() });
export type EntropyDevice = z.infer<typeof entropyDeviceSchema>;

export const serialDeviceSchema = z.strictObject({
  serial_out_path: z.string().nullish(),
  rate_limiter: tokenBucketSchema.nullish(),
});
export type SerialDevice = z.infer<typeof serialDeviceSchema>;

export const memoryHotplugConfigSchema = z.strictObject({
  total_size_mib: int().nullish(),
  slot_size_mib: int().min(128).nullish(),
  block_size_mib: int().min(2).nullish(),
});
export type MemoryHotplugConfig = z.infer<typeof memoryHotplugConfigSchema>;

export const memoryHotplugSizeUpdateSchema = z.strictObject({ requested_size_mib: int().nullish() });
export type MemoryHotplugSizeUpdate = z.infer<typeof memoryHotplugSizeUpdateSchema>;

export const memoryHotplugStatusSchema = z.strictObject({
  total_size_mib: int().nullish(),
  slot_size_mib: int().nullish(),
  block_size_mib: int().nullish(),
  plugged_size_mib: int().nullish(),
  requested_size_mib: int().nullish(),
});
export type MemoryHotplugStatus = z.infer<typeof memoryHotplugStatusSchema>;

export const loggerSchema = z.strictObject({
  level: z.enum(["Error", "Warning", "Info", "Debug", "Trace", "Off"]).nullish(),
  log_path: z.string().nullish(),
  show_level: z.boolean().nullish(),
  show_log_origin: z.boolean().nullish(),
  module: z.string().nullish(),
});
export type LoggerConfig = z.infer<typeof loggerSchema>;

export const metricsSchema = z.strictObject({ metrics_path: z.string() });
export type MetricsConfig = z.infer<typeof metricsSchema>;

// The spec gives this pattern as the field's "format": a link-local address other than .0 and .255 hosts.
const MMDS_IPV4 =
  /^169\.254\.([1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-4])\.([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])$/;

export const mmdsConfigSchema = z.strictObject({
  version: z.enum(["V1", "V2"]).nullish(),
  network_interfaces: z.array(z.string()),
  ipv4_address: z.string().regex(MMDS_IPV4, "must be a 169.254.0.0/16 address (not .0 or .255)").nullish(),
  imds_compat: z.boolean().nullish(),
});
export type MmdsConfig = z.infer<typeof mmdsConfigSchema>;

/** MMDS contents: any JSON object (the guest reads it back over the metadata service). */
export const mmdsContentsObjectSchema = z.record(z.string(), z.unknown());
export type MmdsContentsObject = z.infer<typeof mmdsContentsObjectSchema>;

export const vmSchema = z.strictObject({ state: z.enum(["Paused", "Resumed"]) });
export type Vm = z.infer<typeof vmSchema>;

export const snapshotCreateParamsSchema = z.strictObject({
  mem_file_path: z.string(),
  snapshot_path: z.string(),
  snapshot_type: z.enum(["Full", "Diff"]).nullish(),
});
export type SnapshotCreateParams = z.infer<typeof snapshotCreateParamsSchema>;

export const memoryBackendSchema = z.strictObject({
  backend_type: z.enum(["File", "Uffd"]),
  backend_path: z.string(),
});
export type MemoryBackend = z.infer<typeof memoryBackendSchema>;

export const networkOverrideSchema = z.strictObject({ iface_id: z.string(), host_dev_name: z.string() });
export type NetworkOverride = z.infer<typeof networkOverrideSchema>;

export const vsockOverrideSchema = z.strictObject({ uds_path: z.string() });
export type VsockOverride = z.infer<typeof vsockOverrideSchema>;

export const snapshotLoadParamsSchema = z.strictObject({
  snapshot_path: z.string(),
  mem_file_path: z.string().nullish(),
  mem_backend: memoryBackendSchema.nullish(),
  /** Deprecated by Firecracker in favour of `track_dirty_pages`. */
  enable_diff_snapshots: z.boolean().nullish(),
  track_dirty_pages: z.boolean().nullish(),
  resume_vm: z.boolean().nullish(),
  network_overrides: z.array(networkOverrideSchema).nullish(),
  vsock_override: vsockOverrideSchema.nullish(),
  clock_realtime: z.boolean().nullish(),
});
export type SnapshotLoadParams = z.infer<typeof snapshotLoadParamsSchema>;

/** The `--config-file` document, and what `GET /vm/config` returns. */
export const fullVmConfigurationSchema = z.strictObject({
  balloon: balloonSchema.nullish(),
  drives: z.array(driveSchema).nullish(),
  "boot-source": bootSourceSchema.nullish(),
  "cpu-config": cpuConfigSchema.nullish(),
  logger: loggerSchema.nullish(),
  "machine-config": machineConfigurationSchema.nullish(),
  metrics: metricsSchema.nullish(),
  "memory-hotplug": memoryHotplugConfigSchema.nullish(),
  "mmds-config": mmdsConfigSchema.nullish(),
  "network-interfaces": z.array(networkInterfaceSchema).nullish(),
  pmem: z.array(pmemSchema).nullish(),
  vsock: vsockSchema.nullish(),
  entropy: entropyDeviceSchema.nullish(),
});
export type FullVmConfiguration = z.infer<typeof fullVmConfigurationSchema>;

/** Every definition of the spec by its spec name (the spec-walk test checks this list is complete). */
export const definitionSchemas = {
  ArmRegisterModifier: armRegisterModifierSchema,
  Balloon: balloonSchema,
  BalloonHintingStatus: balloonHintingStatusSchema,
  BalloonStartCmd: balloonStartCmdSchema,
  BalloonStats: balloonStatsSchema,
  BalloonStatsUpdate: balloonStatsUpdateSchema,
  BalloonUpdate: balloonUpdateSchema,
  BootSource: bootSourceSchema,
  CpuConfig: cpuConfigSchema,
  CpuTemplate: machineCpuTemplateSchema,
  CpuidLeafModifier: cpuidLeafModifierSchema,
  CpuidRegisterModifier: cpuidRegisterModifierSchema,
  Drive: driveSchema,
  EntropyDevice: entropyDeviceSchema,
  Error: errorSchema,
  FirecrackerVersion: firecrackerVersionSchema,
  FullVmConfiguration: fullVmConfigurationSchema,
  InstanceActionInfo: instanceActionInfoSchema,
  InstanceInfo: instanceInfoSchema,
  Logger: loggerSchema,
  MachineConfiguration: machineConfigurationSchema,
  MemoryBackend: memoryBackendSchema,
  MemoryHotplugConfig: memoryHotplugConfigSchema,
  MemoryHotplugSizeUpdate: memoryHotplugSizeUpdateSchema,
  MemoryHotplugStatus: memoryHotplugStatusSchema,
  Metrics: metricsSchema,
  MmdsConfig: mmdsConfigSchema,
  MmdsContentsObject: mmdsContentsObjectSchema,
  MsrModifier: msrModifierSchema,
  NetworkInterface: networkInterfaceSchema,
  NetworkOverride: networkOverrideSchema,
  PartialDrive: partialDriveSchema,
  PartialNetworkInterface: partialNetworkInterfaceSchema,
  PartialPmem: partialPmemSchema,
  Pmem: pmemSchema,
  RateLimiter: rateLimiterSchema,
  SerialDevice: serialDeviceSchema,
  SnapshotCreateParams: snapshotCreateParamsSchema,
  SnapshotLoadParams: snapshotLoadParamsSchema,
  TokenBucket: tokenBucketSchema,
  VcpuFeatures: vcpuFeaturesSchema,
  Vm: vmSchema,
  Vsock: vsockSchema,
  VsockOverride: vsockOverrideSchema,
} as const;
export type DefinitionName = keyof typeof definitionSchemas;
