import type { FirecrackerClient } from "./client.ts";
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

/** The order `configureAndStart` applies a config in (then InstanceStart). */
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
] as const;

/**
 * Applies a whole VM config (the `--config-file` / `GET /vm/config` shape) through the API in
 * Firecracker's order: machine config, CPU config, boot source, drives, pmem, network, vsock, balloon,
 * entropy, memory hotplug, logger, metrics, MMDS config (after the interfaces it names), then
 * `InstanceStart`. A failing step rejects with CONFIGURE_FAILED naming the step; the API error is the cause.
 */
export async function configureAndStart(
  client: FirecrackerClient,
  config: FullVmConfiguration,
  options: ConfigureAndStartOptions = {},
): Promise<void> {
  const callOptions = { timeoutMs: options.timeoutMs, signal: options.signal };
  const step = async (name: string, call: () => Promise<unknown>) => {
    options.signal?.throwIfAborted();
    try {
      await call();
    } catch (cause) {
      throw new FirecrackerLaunchError(
        "CONFIGURE_FAILED",
        `configuring the VM failed at ${name}: ${(cause as Error).message}`,
        {
          cause,
          details: { step: name },
        },
      );
    }
  };
  const c = config;
  if (c["machine-config"])
    await step("machine-config", () => client.putMachineConfiguration(c["machine-config"]!, callOptions));
  if (c["cpu-config"])
    await step("cpu-config", () => client.putCpuConfiguration(c["cpu-config"]!, callOptions));
  if (c["boot-source"])
    await step("boot-source", () => client.putGuestBootSource(c["boot-source"]!, callOptions));
  for (const drive of c.drives ?? []) {
    await step(`drives/${drive.drive_id}`, () => client.putGuestDriveByID(drive, callOptions));
  }
  for (const pmem of c.pmem ?? []) {
    await step(`pmem/${pmem.id}`, () => client.putGuestPmemByID(pmem, callOptions));
  }
  for (const iface of c["network-interfaces"] ?? []) {
    await step(`network-interfaces/${iface.iface_id}`, () =>
      client.putGuestNetworkInterfaceByID(iface, callOptions),
    );
  }
  if (c.vsock) await step("vsock", () => client.putGuestVsock(c.vsock!, callOptions));
  if (c.balloon) await step("balloon", () => client.putBalloon(c.balloon!, callOptions));
  if (c.entropy) await step("entropy", () => client.putEntropyDevice(c.entropy!, callOptions));
  if (c["memory-hotplug"])
    await step("memory-hotplug", () => client.putMemoryHotplug(c["memory-hotplug"]!, callOptions));
  if (c.logger) await step("logger", () => client.putLogger(c.logger!, callOptions));
  if (c.metrics) await step("metrics", () => client.putMetrics(c.metrics!, callOptions));
  if (c["mmds-config"]) await step("mmds-config", () => client.putMmdsConfig(c["mmds-config"]!, callOptions));
  if (options.start !== false) {
    await step("InstanceStart", () => client.createSyncAction({ action_type: "InstanceStart" }, callOptions));
  }
}
