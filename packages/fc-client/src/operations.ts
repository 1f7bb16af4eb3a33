// One entry per operation of the v1.16.1 spec, keyed by its operationId, so the client's method names
// match Firecracker's own docs one-to-one. The spec-walk test checks method, path and schemas here
// against the spec file.
import type { z } from "zod";
import { FirecrackerError } from "./errors.ts";
import {
  balloonHintingStatusSchema,
  balloonSchema,
  balloonStartCmdSchema,
  balloonStatsSchema,
  balloonStatsUpdateSchema,
  balloonUpdateSchema,
  bootSourceSchema,
  cpuConfigSchema,
  type DefinitionName,
  driveSchema,
  entropyDeviceSchema,
  firecrackerVersionSchema,
  fullVmConfigurationSchema,
  instanceActionInfoSchema,
  instanceInfoSchema,
  loggerSchema,
  machineConfigurationSchema,
  memoryHotplugConfigSchema,
  memoryHotplugSizeUpdateSchema,
  memoryHotplugStatusSchema,
  metricsSchema,
  mmdsConfigSchema,
  mmdsContentsObjectSchema,
  networkInterfaceSchema,
  partialDriveSchema,
  partialNetworkInterfaceSchema,
  partialPmemSchema,
  pmemSchema,
  serialDeviceSchema,
  snapshotCreateParamsSchema,
  snapshotLoadParamsSchema,
  vmSchema,
  vsockSchema,
} from "./schemas.ts";

/** One operation of Firecracker's API: method, path, and the schemas of its body and response. */
export interface OperationSpec {
  readonly method: "GET" | "PUT" | "PATCH";
  /** The spec's path; `{name}` segments are filled from the body field of the same name. */
  readonly path: string;
  readonly body?: { readonly definition: DefinitionName; readonly schema: z.ZodType };
  readonly response?: { readonly definition: DefinitionName | "object"; readonly schema: z.ZodType };
}

const body = <S extends z.ZodType>(definition: DefinitionName, schema: S) => ({ definition, schema });
const response = <S extends z.ZodType>(definition: DefinitionName | "object", schema: S) => ({
  definition,
  schema,
});

/** Every operation of Firecracker's API spec by its operationId; the client has one method per entry. */
export const OPERATIONS = {
  describeInstance: { method: "GET", path: "/", response: response("InstanceInfo", instanceInfoSchema) },
  createSyncAction: {
    method: "PUT",
    path: "/actions",
    body: body("InstanceActionInfo", instanceActionInfoSchema),
  },
  describeBalloonConfig: { method: "GET", path: "/balloon", response: response("Balloon", balloonSchema) },
  putBalloon: { method: "PUT", path: "/balloon", body: body("Balloon", balloonSchema) },
  patchBalloon: { method: "PATCH", path: "/balloon", body: body("BalloonUpdate", balloonUpdateSchema) },
  describeBalloonStats: {
    method: "GET",
    path: "/balloon/statistics",
    response: response("BalloonStats", balloonStatsSchema),
  },
  patchBalloonStatsInterval: {
    method: "PATCH",
    path: "/balloon/statistics",
    body: body("BalloonStatsUpdate", balloonStatsUpdateSchema),
  },
  startBalloonHinting: {
    method: "PATCH",
    path: "/balloon/hinting/start",
    body: body("BalloonStartCmd", balloonStartCmdSchema),
  },
  describeBalloonHinting: {
    method: "GET",
    path: "/balloon/hinting/status",
    response: response("BalloonHintingStatus", balloonHintingStatusSchema),
  },
  stopBalloonHinting: { method: "PATCH", path: "/balloon/hinting/stop" },
  putGuestBootSource: { method: "PUT", path: "/boot-source", body: body("BootSource", bootSourceSchema) },
  putCpuConfiguration: { method: "PUT", path: "/cpu-config", body: body("CpuConfig", cpuConfigSchema) },
  putGuestDriveByID: { method: "PUT", path: "/drives/{drive_id}", body: body("Drive", driveSchema) },
  patchGuestDriveByID: {
    method: "PATCH",
    path: "/drives/{drive_id}",
    body: body("PartialDrive", partialDriveSchema),
  },
  putGuestPmemByID: { method: "PUT", path: "/pmem/{id}", body: body("Pmem", pmemSchema) },
  patchGuestPmemByID: { method: "PATCH", path: "/pmem/{id}", body: body("PartialPmem", partialPmemSchema) },
  putLogger: { method: "PUT", path: "/logger", body: body("Logger", loggerSchema) },
  getMachineConfiguration: {
    method: "GET",
    path: "/machine-config",
    response: response("MachineConfiguration", machineConfigurationSchema),
  },
  putMachineConfiguration: {
    method: "PUT",
    path: "/machine-config",
    body: body("MachineConfiguration", machineConfigurationSchema),
  },
  // The spec gives PATCH the full MachineConfiguration; Firecracker itself takes any subset of it.
  patchMachineConfiguration: {
    method: "PATCH",
    path: "/machine-config",
    body: body("MachineConfiguration", machineConfigurationSchema.partial()),
  },
  putMetrics: { method: "PUT", path: "/metrics", body: body("Metrics", metricsSchema) },
  putMmds: { method: "PUT", path: "/mmds", body: body("MmdsContentsObject", mmdsContentsObjectSchema) },
  patchMmds: { method: "PATCH", path: "/mmds", body: body("MmdsContentsObject", mmdsContentsObjectSchema) },
  getMmds: { method: "GET", path: "/mmds", response: response("object", mmdsContentsObjectSchema) },
  putMmdsConfig: { method: "PUT", path: "/mmds/config", body: body("MmdsConfig", mmdsConfigSchema) },
  putEntropyDevice: { method: "PUT", path: "/entropy", body: body("EntropyDevice", entropyDeviceSchema) },
  putSerialDevice: { method: "PUT", path: "/serial", body: body("SerialDevice", serialDeviceSchema) },
  putMemoryHotplug: {
    method: "PUT",
    path: "/hotplug/memory",
    body: body("MemoryHotplugConfig", memoryHotplugConfigSchema),
  },
  patchMemoryHotplug: {
    method: "PATCH",
    path: "/hotplug/memory",
    body: body("MemoryHotplugSizeUpdate", memoryHotplugSizeUpdateSchema),
  },
  getMemoryHotplug: {
    method: "GET",
    path: "/hotplug/memory",
    response: response("MemoryHotplugStatus", memoryHotplugStatusSchema),
  },
  putGuestNetworkInterfaceByID: {
    method: "PUT",
    path: "/network-interfaces/{iface_id}",
    body: body("NetworkInterface", networkInterfaceSchema),
  },
  patchGuestNetworkInterfaceByID: {
    method: "PATCH",
    path: "/network-interfaces/{iface_id}",
    body: body("PartialNetworkInterface", partialNetworkInterfaceSchema),
  },
  createSnapshot: {
    method: "PUT",
    path: "/snapshot/create",
    body: body("SnapshotCreateParams", snapshotCreateParamsSchema),
  },
  loadSnapshot: {
    method: "PUT",
    path: "/snapshot/load",
    body: body("SnapshotLoadParams", snapshotLoadParamsSchema),
  },
  getFirecrackerVersion: {
    method: "GET",
    path: "/version",
    response: response("FirecrackerVersion", firecrackerVersionSchema),
  },
  patchVm: { method: "PATCH", path: "/vm", body: body("Vm", vmSchema) },
  getExportVmConfig: {
    method: "GET",
    path: "/vm/config",
    response: response("FullVmConfiguration", fullVmConfigurationSchema),
  },
  putGuestVsock: { method: "PUT", path: "/vsock", body: body("Vsock", vsockSchema) },
} as const satisfies Record<string, OperationSpec>;

/** The type of `OPERATIONS`. */
export type Operations = typeof OPERATIONS;
/** The operationId of an operation of Firecracker's API spec. */
export type OperationId = keyof Operations;

/** Fills `{name}` path segments from the body field of the same name, URI-encoded. */
export function operationPath(operation: OperationSpec, body: unknown): string {
  if (!operation.path.includes("{")) return operation.path; // most paths: no regex on every call
  return operation.path.replace(/\{(\w+)\}/g, (_, name: string) => {
    const value = (body as Record<string, unknown> | undefined)?.[name];
    if (typeof value !== "string" || value.length === 0)
      throw new FirecrackerError(
        "INVALID_REQUEST",
        `${operation.path} needs a non-empty "${name}" in the body`,
      );
    return encodeURIComponent(value);
  });
}
