import type { CallOptions, FirecrackerClient } from "./client.ts";
import { FirecrackerLaunchError } from "./errors.ts";
import type { FullVmConfiguration } from "./schemas.ts";

/** Options of `configureAndStart`: per-call timeout, AbortSignal, and whether to send InstanceStart. */
export interface ConfigureAndStartOptions {
  /** Per-call timeout. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Apply the config but do not send InstanceStart. */
  start?: boolean;
}

/**
 * The order `configureAndStart` applies a config's sections in (then InstanceStart): Firecracker's own,
 * with MMDS config after the interfaces it names. It drives `configureAndStart`; a fork that needs
 * another order changes it here.
 */
export const CONFIGURE_ORDER = [
  "machine-config",
  "cpu-config",
  "boot-source",
  "drives",
  "pmem",
  "network-interfaces",
  "vsock",
  "balloon",
  "entropy",
  "memory-hotplug",
  "logger",
  "metrics",
  "mmds-config",
] as const satisfies readonly (keyof FullVmConfiguration)[];

/** A section of a VM config that `configureAndStart` applies. */
export type ConfigureSection = (typeof CONFIGURE_ORDER)[number];

interface ConfigureCall {
  /** The name a failure reports: the section, and the device id for per-device sections. */
  step: string;
  call: () => Promise<unknown>;
}

type SectionCalls = {
  [K in ConfigureSection]: (
    client: FirecrackerClient,
    value: NonNullable<FullVmConfiguration[K]>,
    options: CallOptions,
  ) => ConfigureCall[];
};

// Keyed by every section of CONFIGURE_ORDER, so a section added there does not compile until it is
// given its API calls.
const SECTION_CALLS: SectionCalls = {
  "machine-config": (client, value, options) => [
    { step: "machine-config", call: () => client.putMachineConfiguration(value, options) },
  ],
  "cpu-config": (client, value, options) => [
    { step: "cpu-config", call: () => client.putCpuConfiguration(value, options) },
  ],
  "boot-source": (client, value, options) => [
    { step: "boot-source", call: () => client.putGuestBootSource(value, options) },
  ],
  drives: (client, drives, options) =>
    drives.map((drive) => ({
      step: `drives/${drive.drive_id}`,
      call: () => client.putGuestDriveByID(drive, options),
    })),
  pmem: (client, devices, options) =>
    devices.map((pmem) => ({ step: `pmem/${pmem.id}`, call: () => client.putGuestPmemByID(pmem, options) })),
  "network-interfaces": (client, interfaces, options) =>
    interfaces.map((iface) => ({
      step: `network-interfaces/${iface.iface_id}`,
      call: () => client.putGuestNetworkInterfaceByID(iface, options),
    })),
  vsock: (client, value, options) => [{ step: "vsock", call: () => client.putGuestVsock(value, options) }],
  balloon: (client, value, options) => [{ step: "balloon", call: () => client.putBalloon(value, options) }],
  entropy: (client, value, options) => [
    { step: "entropy", call: () => client.putEntropyDevice(value, options) },
  ],
  "memory-hotplug": (client, value, options) => [
    { step: "memory-hotplug", call: () => client.putMemoryHotplug(value, options) },
  ],
  logger: (client, value, options) => [{ step: "logger", call: () => client.putLogger(value, options) }],
  metrics: (client, value, options) => [{ step: "metrics", call: () => client.putMetrics(value, options) }],
  "mmds-config": (client, value, options) => [
    { step: "mmds-config", call: () => client.putMmdsConfig(value, options) },
  ],
};

function sectionCalls<K extends ConfigureSection>(
  section: K,
  client: FirecrackerClient,
  config: FullVmConfiguration,
  options: CallOptions,
): ConfigureCall[] {
  const value = config[section];
  if (value === undefined || value === null) return [];
  // TypeScript does not correlate `config[section]` with `SECTION_CALLS[section]` for a generic K.
  return (SECTION_CALLS[section] as SectionCalls[ConfigureSection])(client, value as never, options);
}

/**
 * Applies a whole VM config (the `--config-file` / `GET /vm/config` shape) through the API, section by
 * section in `CONFIGURE_ORDER`, then sends `InstanceStart`. A failing call rejects with CONFIGURE_FAILED
 * naming the step; the API error is the cause.
 */
export async function configureAndStart(
  client: FirecrackerClient,
  config: FullVmConfiguration,
  options: ConfigureAndStartOptions = {},
): Promise<void> {
  const callOptions: CallOptions = { timeoutMs: options.timeoutMs, signal: options.signal };
  const calls = CONFIGURE_ORDER.flatMap((section) => sectionCalls(section, client, config, callOptions));
  if (options.start !== false)
    calls.push({
      step: "InstanceStart",
      call: () => client.createSyncAction({ action_type: "InstanceStart" }, callOptions),
    });
  for (const { step, call } of calls) {
    options.signal?.throwIfAborted();
    try {
      await call();
    } catch (cause) {
      throw new FirecrackerLaunchError(
        "CONFIGURE_FAILED",
        `configuring the VM failed at ${step}: ${(cause as Error).message}`,
        { cause, details: { step } },
      );
    }
  }
}
