// PROVISIONAL (written by the launcher helper so the package builds; the API-client helper owns this
// file and replaces it with the full spec-driven, version-aware client).
import { Agent, request } from "node:http";
import type { Arch } from "@sbx/arch";
import type { z } from "zod";
import { FirecrackerApiError } from "./errors.ts";
import {
  type Balloon,
  type BootSource,
  balloonSchema,
  bootSourceSchema,
  type CpuConfig,
  cpuConfigSchema,
  type Drive,
  driveSchema,
  type EntropyDevice,
  entropyDeviceSchema,
  type FullVmConfiguration,
  type InstanceActionInfo,
  type InstanceInfo,
  instanceActionInfoSchema,
  instanceInfoSchema,
  type LoggerConfig,
  loggerSchema,
  type MachineConfiguration,
  type MemoryHotplugConfig,
  type MetricsConfig,
  type MmdsConfig,
  machineConfigurationSchema,
  memoryHotplugConfigSchema,
  metricsSchema,
  mmdsConfigSchema,
  type NetworkInterface,
  networkInterfaceSchema,
  type Pmem,
  pmemSchema,
  type SnapshotCreateParams,
  type SnapshotLoadParams,
  snapshotCreateParamsSchema,
  snapshotLoadParamsSchema,
  type Vm,
  type Vsock,
  vmSchema,
  vsockSchema,
} from "./schemas.ts";

export interface CallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface CreateFirecrackerClientOptions {
  socketPath: string;
  version?: string;
  arch?: Arch;
  timeoutMs?: number;
}

export interface FirecrackerClient extends AsyncDisposable {
  readonly socketPath: string;
  request(method: string, path: string, body?: unknown, options?: CallOptions): Promise<unknown>;
  describeInstance(options?: CallOptions): Promise<InstanceInfo>;
  getFirecrackerVersion(options?: CallOptions): Promise<{ firecracker_version: string }>;
  getMachineConfiguration(options?: CallOptions): Promise<MachineConfiguration>;
  getExportVmConfig(options?: CallOptions): Promise<FullVmConfiguration>;
  createSyncAction(body: InstanceActionInfo, options?: CallOptions): Promise<void>;
  putMachineConfiguration(body: MachineConfiguration, options?: CallOptions): Promise<void>;
  putCpuConfiguration(body: CpuConfig, options?: CallOptions): Promise<void>;
  putGuestBootSource(body: BootSource, options?: CallOptions): Promise<void>;
  putGuestDriveByID(body: Drive, options?: CallOptions): Promise<void>;
  putGuestPmemByID(body: Pmem, options?: CallOptions): Promise<void>;
  putGuestNetworkInterfaceByID(body: NetworkInterface, options?: CallOptions): Promise<void>;
  putGuestVsock(body: Vsock, options?: CallOptions): Promise<void>;
  putBalloon(body: Balloon, options?: CallOptions): Promise<void>;
  putEntropyDevice(body: EntropyDevice, options?: CallOptions): Promise<void>;
  putMemoryHotplug(body: MemoryHotplugConfig, options?: CallOptions): Promise<void>;
  putLogger(body: LoggerConfig, options?: CallOptions): Promise<void>;
  putMetrics(body: MetricsConfig, options?: CallOptions): Promise<void>;
  putMmdsConfig(body: MmdsConfig, options?: CallOptions): Promise<void>;
  patchVm(body: Vm, options?: CallOptions): Promise<void>;
  createSnapshot(body: SnapshotCreateParams, options?: CallOptions): Promise<void>;
  loadSnapshot(body: SnapshotLoadParams, options?: CallOptions): Promise<void>;
}

/** A small typed client over the API socket (HTTP/1.1, keep-alive); non-2xx → FirecrackerApiError. */
export function createFirecrackerClient(options: CreateFirecrackerClientOptions): FirecrackerClient {
  const agent = new Agent({ keepAlive: true, maxSockets: 4 });
  const defaultTimeout = options.timeoutMs ?? 10_000;

  const send = (method: string, path: string, body?: unknown, call: CallOptions = {}): Promise<unknown> =>
    new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : JSON.stringify(body);
      const req = request(
        {
          agent,
          socketPath: options.socketPath,
          method,
          path,
          headers: {
            Accept: "application/json",
            ...(data === undefined
              ? {}
              : { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(data) }),
          },
          signal: call.signal,
          timeout: call.timeoutMs ?? defaultTimeout,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (chunk: Buffer) => chunks.push(chunk));
          res.on("error", reject);
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            let json: unknown;
            if (text.length > 0) {
              try {
                json = JSON.parse(text);
              } catch (cause) {
                if ((res.statusCode ?? 0) < 300)
                  return reject(new Error(`${method} ${path}: the answer is not JSON`, { cause }));
              }
            }
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) return resolve(json);
            const faultMessage =
              json &&
              typeof json === "object" &&
              typeof (json as { fault_message?: unknown }).fault_message === "string"
                ? (json as { fault_message: string }).fault_message
                : undefined;
            reject(new FirecrackerApiError({ status, method, path, faultMessage }));
          });
        },
      );
      req.on("timeout", () =>
        req.destroy(new Error(`${method} ${path} timed out after ${call.timeoutMs ?? defaultTimeout} ms`)),
      );
      req.on("error", reject);
      req.end(data);
    });

  const put =
    <T>(schema: z.ZodType<T>, path: (body: T) => string, method = "PUT") =>
    async (body: T, call?: CallOptions): Promise<void> => {
      const parsed = schema.parse(body);
      await send(method, path(parsed), parsed, call);
    };

  return {
    socketPath: options.socketPath,
    request: send,
    describeInstance: async (call) => instanceInfoSchema.parse(await send("GET", "/", undefined, call)),
    getFirecrackerVersion: async (call) =>
      (await send("GET", "/version", undefined, call)) as { firecracker_version: string },
    getMachineConfiguration: async (call) =>
      machineConfigurationSchema.parse(await send("GET", "/machine-config", undefined, call)),
    getExportVmConfig: async (call) =>
      (await send("GET", "/vm/config", undefined, call)) as FullVmConfiguration,
    createSyncAction: put(instanceActionInfoSchema, () => "/actions"),
    putMachineConfiguration: put(machineConfigurationSchema, () => "/machine-config"),
    putCpuConfiguration: put(cpuConfigSchema, () => "/cpu-config"),
    putGuestBootSource: put(bootSourceSchema, () => "/boot-source"),
    putGuestDriveByID: put(driveSchema, (d) => `/drives/${encodeURIComponent(d.drive_id)}`),
    putGuestPmemByID: put(pmemSchema, (p) => `/pmem/${encodeURIComponent(p.id)}`),
    putGuestNetworkInterfaceByID: put(
      networkInterfaceSchema,
      (n) => `/network-interfaces/${encodeURIComponent(n.iface_id)}`,
    ),
    putGuestVsock: put(vsockSchema, () => "/vsock"),
    putBalloon: put(balloonSchema, () => "/balloon"),
    putEntropyDevice: put(entropyDeviceSchema, () => "/entropy"),
    putMemoryHotplug: put(memoryHotplugConfigSchema, () => "/hotplug/memory"),
    putLogger: put(loggerSchema, () => "/logger"),
    putMetrics: put(metricsSchema, () => "/metrics"),
    putMmdsConfig: put(mmdsConfigSchema, () => "/mmds/config"),
    patchVm: put(vmSchema, () => "/vm", "PATCH"),
    createSnapshot: put(snapshotCreateParamsSchema, () => "/snapshot/create"),
    loadSnapshot: put(snapshotLoadParamsSchema, () => "/snapshot/load"),
    async [Symbol.asyncDispose]() {
      agent.destroy();
    },
  };
}
