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

/** Firecracker's `TokenBucket`: a rate limiter's bucket (size, one-time burst, refill time in ms). */
export const tokenBucketSchema = z.strictObject({
  size: uint(),
  one_time_burst: uint().nullish(),
  refill_time: uint(),
});
/** A rate limiter's token bucket (`TokenBucket`). */
export type TokenBucket = z.infer<typeof tokenBucketSchema>;

/** Firecracker's `RateLimiter`: independent bandwidth and ops token buckets for one device. */
export const rateLimiterSchema = z.strictObject({
  bandwidth: tokenBucketSchema.nullish(),
  ops: tokenBucketSchema.nullish(),
});
/** A device's IO rate limiter (`RateLimiter`). */
export type RateLimiter = z.infer<typeof rateLimiterSchema>;

/** Firecracker's `Error` body: the `fault_message` of a non-2xx answer. */
export const errorSchema = z.looseObject({ fault_message: z.string().optional() });
/** The body of a non-2xx Firecracker answer (`Error`). */
export type FirecrackerFault = z.infer<typeof errorSchema>;

/** Firecracker's `InstanceInfo` (`GET /`): app name, id, state and VMM version. */
export const instanceInfoSchema = z.strictObject({
  app_name: z.string(),
  id: z.string(),
  state: z.enum(["Not started", "Running", "Paused"]),
  vmm_version: z.string(),
});
/** What `GET /` says about the microVM (`InstanceInfo`). */
export type InstanceInfo = z.infer<typeof instanceInfoSchema>;

/** Firecracker's `FirecrackerVersion` (`GET /version`). */
export const firecrackerVersionSchema = z.strictObject({ firecracker_version: z.string() });
/** The running Firecracker's version (`FirecrackerVersion`). */
export type FirecrackerVersion = z.infer<typeof firecrackerVersionSchema>;

/** Firecracker's `InstanceActionInfo` (`PUT /actions`): FlushMetrics, InstanceStart or SendCtrlAltDel. */
export const instanceActionInfoSchema = z.strictObject({
  action_type: z.enum(["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]),
});
/** An action for `PUT /actions` (`InstanceActionInfo`). */
export type InstanceActionInfo = z.infer<typeof instanceActionInfoSchema>;

/** Firecracker's `BootSource` (`PUT /boot-source`): kernel image, boot arguments, initrd. */
export const bootSourceSchema = z.strictObject({
  kernel_image_path: z.string(),
  boot_args: z.string().nullish(),
  initrd_path: z.string().nullish(),
});
/** The kernel, its command line and initrd (`BootSource`). */
export type BootSource = z.infer<typeof bootSourceSchema>;

/**
 * `machine-config.cpu_template` (the spec's `CpuTemplate`): a static CPU template name, of either arch, or
 * "None". Custom templates are a different thing: `@sbx/cpu-template`'s `CustomCpuTemplate`.
 */
export const machineCpuTemplateSchema = z.enum([...STATIC_CPU_TEMPLATE_NAMES, "None"]);
/** A static CPU template name or "None", as `machine-config.cpu_template` takes it. */
export type MachineCpuTemplate = z.infer<typeof machineCpuTemplateSchema>;

/** Firecracker's `MachineConfiguration` (`/machine-config`): vCPUs, memory, SMT, dirty tracking, static CPU template, huge pages. */
export const machineConfigurationSchema = z.strictObject({
  vcpu_count: int().min(1).max(32),
  mem_size_mib: int(),
  smt: z.boolean().nullish(),
  track_dirty_pages: z.boolean().nullish(),
  cpu_template: machineCpuTemplateSchema.nullish(),
  huge_pages: z.enum(["None", "2M"]).nullish(),
});
/** vCPUs, memory and the rest of `/machine-config` (`MachineConfiguration`). */
export type MachineConfiguration = z.infer<typeof machineConfigurationSchema>;

/** Firecracker's `CpuidRegisterModifier`: a bitmap for one CPUID register (x86_64). */
export const cpuidRegisterModifierSchema = z.strictObject({
  register: z.enum(["eax", "ebx", "ecx", "edx"]),
  bitmap: z.string(),
});
/** A bitmap for one CPUID register (`CpuidRegisterModifier`, x86_64). */
export type CpuidRegisterModifier = z.infer<typeof cpuidRegisterModifierSchema>;

/** Firecracker's `CpuidLeafModifier`: the register modifiers of one CPUID leaf and subleaf (x86_64). */
export const cpuidLeafModifierSchema = z.strictObject({
  leaf: z.string(),
  subleaf: z.string(),
  flags: int(),
  modifiers: z.array(cpuidRegisterModifierSchema),
});
/** The modifiers of one CPUID leaf and subleaf (`CpuidLeafModifier`, x86_64). */
export type CpuidLeafModifier = z.infer<typeof cpuidLeafModifierSchema>;

/** Firecracker's `MsrModifier`: a bitmap for one model-specific register (x86_64). */
export const msrModifierSchema = z.strictObject({ addr: z.string(), bitmap: z.string() });
/** A bitmap for one model-specific register (`MsrModifier`, x86_64). */
export type MsrModifier = z.infer<typeof msrModifierSchema>;

/** Firecracker's `ArmRegisterModifier`: a bitmap for one ARM register (aarch64). */
export const armRegisterModifierSchema = z.strictObject({ addr: z.string(), bitmap: z.string() });
/** A bitmap for one ARM register (`ArmRegisterModifier`, aarch64). */
export type ArmRegisterModifier = z.infer<typeof armRegisterModifierSchema>;

/** Firecracker's `VcpuFeatures`: a vCPU feature bitmap by index (aarch64). */
export const vcpuFeaturesSchema = z.strictObject({ index: int(), bitmap: z.string() });
/** A vCPU feature bitmap (`VcpuFeatures`, aarch64). */
export type VcpuFeatures = z.infer<typeof vcpuFeaturesSchema>;

/** A custom CPU template (`PUT /cpu-config`): cpuid/msr modifiers on x86_64, reg/vcpu features on aarch64. */
export const cpuConfigSchema = z.strictObject({
  kvm_capabilities: z.array(z.string()).nullish(),
  cpuid_modifiers: z.array(cpuidLeafModifierSchema).nullish(),
  msr_modifiers: z.array(msrModifierSchema).nullish(),
  reg_modifiers: z.array(armRegisterModifierSchema).nullish(),
  vcpu_features: z.array(vcpuFeaturesSchema).nullish(),
});
/** A custom CPU template as `PUT /cpu-config` takes it (`CpuConfig`). */
export type CpuConfig = z.infer<typeof cpuConfigSchema>;

/** Firecracker's `Drive` (`PUT /drives/{id}`): a block device backed by a file or a vhost-user socket. */
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
/** A block device (`Drive`). */
export type Drive = z.infer<typeof driveSchema>;

/** Firecracker's `PartialDrive` (`PATCH /drives/{id}`): a new backing file or rate limiter after start. */
export const partialDriveSchema = z.strictObject({
  drive_id: z.string(),
  path_on_host: z.string().nullish(),
  rate_limiter: rateLimiterSchema.nullish(),
});
/** A drive update after start (`PartialDrive`). */
export type PartialDrive = z.infer<typeof partialDriveSchema>;

/** Firecracker's `Pmem` (`PUT /pmem/{id}`): a virtio-pmem device backed by a file. */
export const pmemSchema = z.strictObject({
  id: z.string(),
  path_on_host: z.string(),
  root_device: z.boolean().nullish(),
  read_only: z.boolean().nullish(),
  rate_limiter: rateLimiterSchema.nullish(),
});
/** A virtio-pmem device (`Pmem`). */
export type Pmem = z.infer<typeof pmemSchema>;

/** Firecracker's `PartialPmem` (`PATCH /pmem/{id}`): a pmem device's rate limiter after start. */
export const partialPmemSchema = z.strictObject({
  id: z.string(),
  rate_limiter: rateLimiterSchema.nullish(),
});
/** A pmem device update after start (`PartialPmem`). */
export type PartialPmem = z.infer<typeof partialPmemSchema>;

/** Firecracker's `NetworkInterface` (`PUT /network-interfaces/{id}`): a virtio-net device on a host TAP. */
export const networkInterfaceSchema = z.strictObject({
  iface_id: z.string(),
  host_dev_name: z.string(),
  guest_mac: z.string().nullish(),
  mtu: int().min(68).max(65535).nullish(),
  rx_rate_limiter: rateLimiterSchema.nullish(),
  tx_rate_limiter: rateLimiterSchema.nullish(),
});
/** A network interface on a host TAP device (`NetworkInterface`). */
export type NetworkInterface = z.infer<typeof networkInterfaceSchema>;

/** Firecracker's `PartialNetworkInterface` (`PATCH /network-interfaces/{id}`): rate limiters after start. */
export const partialNetworkInterfaceSchema = z.strictObject({
  iface_id: z.string(),
  rx_rate_limiter: rateLimiterSchema.nullish(),
  tx_rate_limiter: rateLimiterSchema.nullish(),
});
/** A network interface's rate limiters after start (`PartialNetworkInterface`). */
export type PartialNetworkInterface = z.infer<typeof partialNetworkInterfaceSchema>;

/** Firecracker's `Vsock` (`PUT /vsock`): the guest CID and the host Unix socket of the hybrid vsock. */
export const vsockSchema = z.strictObject({
  guest_cid: int().min(3),
  uds_path: z.string(),
  vsock_id: z.string().nullish(),
});
/** The vsock device (`Vsock`). */
export type Vsock = z.infer<typeof vsockSchema>;

/** Firecracker's `Balloon` (`PUT /balloon`): target size, deflate on OOM, stats interval, free-page hinting and reporting. */
export const balloonSchema = z.strictObject({
  amount_mib: int(),
  deflate_on_oom: z.boolean(),
  stats_polling_interval_s: int().nullish(),
  free_page_hinting: z.boolean().nullish(),
  free_page_reporting: z.boolean().nullish(),
});
/** The balloon device (`Balloon`). */
export type Balloon = z.infer<typeof balloonSchema>;

/** Firecracker's `BalloonUpdate` (`PATCH /balloon`): a new target size. */
export const balloonUpdateSchema = z.strictObject({ amount_mib: int() });
/** A new balloon target size (`BalloonUpdate`). */
export type BalloonUpdate = z.infer<typeof balloonUpdateSchema>;

/** Firecracker's `BalloonStatsUpdate` (`PATCH /balloon/statistics`): a new polling interval. */
export const balloonStatsUpdateSchema = z.strictObject({ stats_polling_interval_s: int() });
/** A new balloon statistics polling interval (`BalloonStatsUpdate`). */
export type BalloonStatsUpdate = z.infer<typeof balloonStatsUpdateSchema>;

/** Firecracker's `BalloonStats` (`GET /balloon/statistics`). */
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
/** The balloon device's statistics (`BalloonStats`). */
export type BalloonStats = z.infer<typeof balloonStatsSchema>;

/** Firecracker's `BalloonStartCmd`: starts a free-page hinting run. */
export const balloonStartCmdSchema = z.strictObject({ acknowledge_on_stop: z.boolean().nullish() });
/** The start of a free-page hinting run (`BalloonStartCmd`). */
export type BalloonStartCmd = z.infer<typeof balloonStartCmdSchema>;

/** Firecracker's `BalloonHintingStatus`: where a free-page hinting run is. */
export const balloonHintingStatusSchema = z.strictObject({
  host_cmd: int(),
  guest_cmd: int().nullish(),
});
/** The free-page hinting status (`BalloonHintingStatus`). */
export type BalloonHintingStatus = z.infer<typeof balloonHintingStatusSchema>;

/** Firecracker's `EntropyDevice` (`PUT /entropy`): a virtio-rng device and its rate limiter. */
export const entropyDeviceSchema = z.strictObject({ rate_limiter: rateLimiterSchema.nullish() });
/** The entropy (virtio-rng) device (`EntropyDevice`). */
export type EntropyDevice = z.infer<typeof entropyDeviceSchema>;

/** Firecracker's `SerialDevice` (`PUT /serial`): where the serial console's output goes. */
export const serialDeviceSchema = z.strictObject({
  serial_out_path: z.string().nullish(),
  rate_limiter: tokenBucketSchema.nullish(),
});
/** The serial device's configuration (`SerialDevice`). */
export type SerialDevice = z.infer<typeof serialDeviceSchema>;

/** Firecracker's `MemoryHotplugConfig` (`PUT /hotplug/memory`): the virtio-mem region. */
export const memoryHotplugConfigSchema = z.strictObject({
  total_size_mib: int().nullish(),
  slot_size_mib: int().min(128).nullish(),
  block_size_mib: int().min(2).nullish(),
});
/** The hotpluggable memory (virtio-mem) device (`MemoryHotplugConfig`). */
export type MemoryHotplugConfig = z.infer<typeof memoryHotplugConfigSchema>;

/** Firecracker's `MemoryHotplugSizeUpdate` (`PATCH /hotplug/memory`): a new requested size. */
export const memoryHotplugSizeUpdateSchema = z.strictObject({ requested_size_mib: int().nullish() });
/** A new size of the hotpluggable memory region (`MemoryHotplugSizeUpdate`). */
export type MemoryHotplugSizeUpdate = z.infer<typeof memoryHotplugSizeUpdateSchema>;

/** Firecracker's `MemoryHotplugStatus` (`GET /hotplug/memory`). */
export const memoryHotplugStatusSchema = z.strictObject({
  total_size_mib: int().nullish(),
  slot_size_mib: int().nullish(),
  block_size_mib: int().nullish(),
  plugged_size_mib: int().nullish(),
  requested_size_mib: int().nullish(),
});
/** The hotpluggable memory device's status (`MemoryHotplugStatus`). */
export type MemoryHotplugStatus = z.infer<typeof memoryHotplugStatusSchema>;

/** Firecracker's `Logger` (`PUT /logger`): log path, level and what each line shows. */
export const loggerSchema = z.strictObject({
  level: z.enum(["Error", "Warning", "Info", "Debug", "Trace", "Off"]).nullish(),
  log_path: z.string().nullish(),
  show_level: z.boolean().nullish(),
  show_log_origin: z.boolean().nullish(),
  module: z.string().nullish(),
});
/** Firecracker's own logging (`Logger`). */
export type LoggerConfig = z.infer<typeof loggerSchema>;

/** Firecracker's `Metrics` (`PUT /metrics`): the file or FIFO metrics go to. */
export const metricsSchema = z.strictObject({ metrics_path: z.string() });
/** Where Firecracker writes metrics (`Metrics`). */
export type MetricsConfig = z.infer<typeof metricsSchema>;

// The spec gives this pattern as the field's "format": a link-local address other than .0 and .255 hosts.
const MMDS_IPV4 =
  /^169\.254\.([1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-4])\.([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])$/;

/** Firecracker's `MmdsConfig` (`PUT /mmds/config`): version, interfaces and address of the metadata service. */
export const mmdsConfigSchema = z.strictObject({
  version: z.enum(["V1", "V2"]).nullish(),
  network_interfaces: z.array(z.string()),
  ipv4_address: z.string().regex(MMDS_IPV4, "must be a 169.254.0.0/16 address (not .0 or .255)").nullish(),
  imds_compat: z.boolean().nullish(),
});
/** The metadata service's configuration (`MmdsConfig`). */
export type MmdsConfig = z.infer<typeof mmdsConfigSchema>;

/** MMDS contents: any JSON object (the guest reads it back over the metadata service). */
export const mmdsContentsObjectSchema = z.record(z.string(), z.unknown());
/** MMDS contents: any JSON object (`MmdsContentsObject`). */
export type MmdsContentsObject = z.infer<typeof mmdsContentsObjectSchema>;

/** Firecracker's `Vm` (`PATCH /vm`): Paused or Resumed. */
export const vmSchema = z.strictObject({ state: z.enum(["Paused", "Resumed"]) });
/** The microVM's running state (`Vm`). */
export type Vm = z.infer<typeof vmSchema>;

/** Firecracker's `SnapshotCreateParams` (`PUT /snapshot/create`): Full or Diff, state and memory file paths. */
export const snapshotCreateParamsSchema = z.strictObject({
  mem_file_path: z.string(),
  snapshot_path: z.string(),
  snapshot_type: z.enum(["Full", "Diff"]).nullish(),
});
/** What `PUT /snapshot/create` writes where (`SnapshotCreateParams`). */
export type SnapshotCreateParams = z.infer<typeof snapshotCreateParamsSchema>;

/** Firecracker's `MemoryBackend`: a snapshot's memory from a file or from a userfaultfd handler's socket (Uffd). */
export const memoryBackendSchema = z.strictObject({
  backend_type: z.enum(["File", "Uffd"]),
  backend_path: z.string(),
});
/** Where a restored VM's memory comes from (`MemoryBackend`). */
export type MemoryBackend = z.infer<typeof memoryBackendSchema>;

/** Firecracker's `NetworkOverride`: a network interface's TAP device changed at snapshot load. */
export const networkOverrideSchema = z.strictObject({ iface_id: z.string(), host_dev_name: z.string() });
/** A TAP device changed at snapshot load (`NetworkOverride`). */
export type NetworkOverride = z.infer<typeof networkOverrideSchema>;

/** Firecracker's `VsockOverride`: the vsock's Unix socket changed at snapshot load. */
export const vsockOverrideSchema = z.strictObject({ uds_path: z.string() });
/** A vsock Unix socket changed at snapshot load (`VsockOverride`). */
export type VsockOverride = z.infer<typeof vsockOverrideSchema>;

/** Firecracker's `SnapshotLoadParams` (`PUT /snapshot/load`): state file, memory backend, dirty tracking, resume, overrides. */
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
/** What `PUT /snapshot/load` restores from, and how (`SnapshotLoadParams`). */
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
/** A whole VM configuration (`FullVmConfiguration`). */
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
/** The name of a definition of Firecracker's API spec. */
export type DefinitionName = keyof typeof definitionSchemas;
