// A fake Firecracker API for tests: an HTTP server on a Unix socket that validates requests with the
// same schemas the client uses, answers with Firecracker's own fault messages, and keeps the
// pre-boot / running / paused state machine. It is version-aware like a real binary: given
// `version: "1.14.2"` it refuses what 1.14 does not have, the way 1.14 does.

import { mkdtempSync } from "node:fs";
import { rm } from "node:fs/promises";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import { OPERATIONS, type OperationId, type OperationSpec } from "../operations.ts";
import type {
  Drive,
  FullVmConfiguration,
  InstanceInfo,
  MachineConfiguration,
  NetworkInterface,
  Pmem,
} from "../schemas.ts";
import { FIELD_SINCE, OPERATION_SINCE, parseFirecrackerVersion, versionAtLeast } from "../versions.ts";

/** Options of `startFakeFirecrackerApi`: socket, version to behave as, instance id, and an `intercept` for chosen answers. */
export interface FakeFirecrackerApiOptions {
  /** Where to listen; a fresh temp dir's `api.sock` by default (removed on close). */
  socketPath?: string;
  /** The version to report and to behave as; "1.16.1" by default. */
  version?: string;
  id?: string;
  /** Answer a request yourself (return undefined to let the fake handle it): inject faults in tests. */
  intercept?: (request: RecordedRequest) => { status: number; body?: unknown } | undefined;
}

/** A request the fake API received: method, path, the operation it matched and its body. */
export interface RecordedRequest {
  method: string;
  path: string;
  operationId: OperationId | undefined;
  body: unknown;
}

/** A fake Firecracker API on a Unix socket that validates requests as Firecracker does and records them. */
export interface FakeFirecrackerApi extends AsyncDisposable {
  readonly socketPath: string;
  /** Every request received, in order, with its answer's status. */
  readonly requests: readonly (RecordedRequest & { status: number })[];
  readonly state: InstanceInfo["state"];
  /** What `GET /vm/config` would return now. */
  readonly config: FullVmConfiguration;
  close(): Promise<void>;
}

type State = InstanceInfo["state"];

const PRE_BOOT_ONLY = new Set<OperationId>([
  "putGuestBootSource",
  "putGuestDriveByID",
  "putGuestPmemByID",
  "putGuestNetworkInterfaceByID",
  "putMachineConfiguration",
  "patchMachineConfiguration",
  "putCpuConfiguration",
  "putGuestVsock",
  "putBalloon",
  "putEntropyDevice",
  "putSerialDevice",
  "putMemoryHotplug",
  "putLogger",
  "putMetrics",
  "putMmdsConfig",
  "loadSnapshot",
]);
const POST_BOOT_ONLY = new Set<OperationId>([
  "patchGuestDriveByID",
  "patchGuestNetworkInterfaceByID",
  "patchGuestPmemByID",
  "patchBalloon",
  "patchBalloonStatsInterval",
  "describeBalloonStats",
  "startBalloonHinting",
  "describeBalloonHinting",
  "stopBalloonHinting",
  "patchMemoryHotplug",
  "getMemoryHotplug",
  "patchVm",
  "createSnapshot",
]);
// Configuring any of these before a snapshot load makes Firecracker refuse the load.
const BOOT_SPECIFIC = new Set<OperationId>([
  "putGuestBootSource",
  "putGuestDriveByID",
  "putGuestPmemByID",
  "putGuestNetworkInterfaceByID",
  "putMachineConfiguration",
  "patchMachineConfiguration",
  "putCpuConfiguration",
  "putGuestVsock",
  "putBalloon",
  "putEntropyDevice",
]);

const DEFAULT_MACHINE: MachineConfiguration = {
  vcpu_count: 1,
  mem_size_mib: 128,
  smt: false,
  track_dirty_pages: false,
  huge_pages: "None",
};

const ROUTES = (Object.entries(OPERATIONS) as [OperationId, OperationSpec][]).map(([id, operation]) => ({
  id,
  operation,
  pattern: new RegExp(`^${operation.path.replace(/\{\w+\}/g, "([^/]+)")}$`),
}));

class Fault extends Error {
  readonly status: number;
  constructor(message: string, status = 400) {
    super(message);
    this.status = status;
  }
}

/** Starts a fake Firecracker API server; `await using api = await startFakeFirecrackerApi()`. */
export async function startFakeFirecrackerApi(
  options: FakeFirecrackerApiOptions = {},
): Promise<FakeFirecrackerApi> {
  const version = options.version ?? "1.16.1";
  const parsedVersion = parseFirecrackerVersion(version);
  if (!parsedVersion) throw new TypeError(`not a Firecracker version: ${version}`);
  const ownDir = options.socketPath ? undefined : mkdtempSync(join(tmpdir(), "sbx-fake-fc-"));
  const socketPath = options.socketPath ?? join(ownDir as string, "api.sock");
  const requests: (RecordedRequest & { status: number })[] = [];
  let state: State = "Not started";
  let bootSpecificConfigured = false;
  let machine: MachineConfiguration = { ...DEFAULT_MACHINE };
  const drives: Drive[] = [];
  const interfaces: NetworkInterface[] = [];
  const pmem: Pmem[] = [];
  const devices: FullVmConfiguration = {};
  const exportConfig = (): FullVmConfiguration => ({
    ...devices,
    "machine-config": machine,
    drives,
    "network-interfaces": interfaces,
    pmem,
  });
  let mmds: Record<string, unknown> | undefined;
  const has = (minimum: string | undefined) =>
    minimum === undefined || versionAtLeast(parsedVersion, minimum);

  const handle = (id: OperationId, body: unknown): { status: number; body?: unknown } => {
    const b = body as Record<string, unknown>;
    if (PRE_BOOT_ONLY.has(id) && state !== "Not started")
      throw new Fault("The requested operation is not supported after starting the microVM.");
    if (POST_BOOT_ONLY.has(id) && state === "Not started")
      throw new Fault("The requested operation is not supported before starting the microVM.");
    if (BOOT_SPECIFIC.has(id)) bootSpecificConfigured = true;
    switch (id) {
      case "describeInstance":
        return {
          status: 200,
          body: {
            app_name: "Firecracker",
            id: options.id ?? "anonymous-instance",
            state,
            vmm_version: version,
          },
        };
      case "getFirecrackerVersion":
        return { status: 200, body: { firecracker_version: version } };
      case "getMachineConfiguration":
        return { status: 200, body: machine };
      case "getExportVmConfig":
        return { status: 200, body: exportConfig() };
      case "putMachineConfiguration":
        machine = { ...DEFAULT_MACHINE, ...(b as MachineConfiguration) };
        return { status: 204 };
      case "patchMachineConfiguration":
        machine = { ...machine, ...(b as Partial<MachineConfiguration>) };
        return { status: 204 };
      case "putGuestBootSource":
        devices["boot-source"] = b as FullVmConfiguration["boot-source"];
        return { status: 204 };
      case "putGuestDriveByID":
        upsert(drives, "drive_id", b as Drive);
        return { status: 204 };
      case "putGuestNetworkInterfaceByID":
        upsert(interfaces, "iface_id", b as NetworkInterface);
        return { status: 204 };
      case "putGuestPmemByID":
        upsert(pmem, "id", b as Pmem);
        return { status: 204 };
      case "putCpuConfiguration":
        devices["cpu-config"] = b as FullVmConfiguration["cpu-config"];
        return { status: 204 };
      case "putGuestVsock":
        devices.vsock = b as FullVmConfiguration["vsock"];
        return { status: 204 };
      case "putBalloon":
        devices.balloon = b as FullVmConfiguration["balloon"];
        return { status: 204 };
      case "putEntropyDevice":
        devices.entropy = b as FullVmConfiguration["entropy"];
        return { status: 204 };
      case "putMemoryHotplug":
        devices["memory-hotplug"] = b as FullVmConfiguration["memory-hotplug"];
        return { status: 204 };
      case "putLogger":
        devices.logger = b as FullVmConfiguration["logger"];
        return { status: 204 };
      case "putMetrics":
        devices.metrics = b as FullVmConfiguration["metrics"];
        return { status: 204 };
      case "putMmdsConfig":
        devices["mmds-config"] = b as FullVmConfiguration["mmds-config"];
        return { status: 204 };
      case "describeBalloonConfig":
        if (!devices.balloon)
          throw new Fault("Received Error. Status code: 400 Bad Request. Message: No balloon device found.");
        return { status: 200, body: devices.balloon };
      case "putMmds":
        mmds = b;
        return { status: 204 };
      case "patchMmds":
        mmds = mergePatch(mmds ?? {}, b) as Record<string, unknown>;
        return { status: 204 };
      case "getMmds":
        return { status: 200, body: mmds ?? {} };
      case "createSyncAction":
        return action(b.action_type as string);
      case "patchVm":
        state = b.state === "Paused" ? "Paused" : "Running";
        return { status: 204 };
      case "createSnapshot":
        if (state !== "Paused")
          throw new Fault("Create snapshot error: Cannot save the microVM state: the microVM is not paused.");
        return { status: 204 };
      case "loadSnapshot":
        if (bootSpecificConfigured)
          throw new Fault(
            "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.",
          );
        state = b.resume_vm === true ? "Running" : "Paused";
        return { status: 204 };
      case "describeBalloonStats":
        if (!devices.balloon?.stats_polling_interval_s)
          throw new Fault("Statistics are not enabled for the balloon device.");
        return { status: 200, body: { target_pages: 0, actual_pages: 0, target_mib: 0, actual_mib: 0 } };
      case "describeBalloonHinting":
        return { status: 200, body: { host_cmd: 0 } };
      case "getMemoryHotplug":
        return {
          status: 200,
          body: { ...devices["memory-hotplug"], plugged_size_mib: 0, requested_size_mib: 0 },
        };
      default:
        return { status: 204 };
    }
  };

  const action = (type: string): { status: number } => {
    if (type === "InstanceStart") {
      if (state !== "Not started")
        throw new Fault("The requested operation is not supported after starting the microVM.");
      if (!devices["boot-source"])
        throw new Fault("Start microvm error: Cannot start microvm without kernel configuration.");
      state = "Running";
    } else if (state === "Not started") {
      throw new Fault("The requested operation is not supported before starting the microVM.");
    }
    return { status: 204 };
  };

  const server = createServer((req, res) => {
    void serve(req, res);
  });
  const serve = async (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const method = req.method ?? "GET";
    const path = (req.url ?? "/").split("?")[0] as string;
    const text = Buffer.concat(chunks).toString("utf8");
    const found = ROUTES.find((r) => r.operation.method === method && r.pattern.test(path));
    const record: RecordedRequest = { method, path, operationId: found?.id, body: undefined };
    let answer: { status: number; body?: unknown };
    try {
      if (text.length > 0) {
        try {
          record.body = JSON.parse(text);
        } catch (cause) {
          throw new Fault(
            `An error occurred when deserializing the json body of a request: ${(cause as Error).message}.`,
          );
        }
      }
      answer = options.intercept?.(record) ?? dispatch(record);
    } catch (error) {
      answer =
        error instanceof Fault
          ? { status: error.status, body: { fault_message: error.message } }
          : {
              status: 500,
              body: { fault_message: String(error) },
            };
    }
    requests.push({ ...record, status: answer.status });
    const payload = answer.body === undefined ? "" : JSON.stringify(answer.body);
    res.writeHead(
      answer.status,
      payload ? { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(payload) } : {},
    );
    res.end(payload);

    function dispatch(record: RecordedRequest) {
      if (!found || !has(OPERATION_SINCE[found.id]))
        throw new Fault(`Invalid request method and/or path: ${method} ${path.split("/")[1] ?? ""}.`);
      const { id, operation } = found;
      if (operation.body) {
        if (record.body === undefined) throw new Fault("The body of the request is empty.");
        validate(id, operation, record.body);
        const param = /\{(\w+)\}/.exec(operation.path)?.[1];
        if (param) {
          const fromPath = decodeURIComponent(path.slice(path.lastIndexOf("/") + 1));
          if ((record.body as Record<string, unknown>)[param] !== fromPath)
            throw new Fault("The id from the path does not match the id from the body!");
        }
      }
      return handle(id, record.body);
    }
  };

  const validate = (id: OperationId, operation: OperationSpec, body: unknown) => {
    const definition = operation.body?.definition;
    const since = definition ? FIELD_SINCE[definition] : undefined;
    const schema = operation.body?.schema as z.ZodType;
    const known =
      schema instanceof z.ZodObject
        ? Object.keys(schema.shape).filter((field) => has(since?.[field]))
        : undefined;
    if (known && body && typeof body === "object" && !Array.isArray(body)) {
      const unknown = Object.keys(body).find((field) => !known.includes(field));
      if (unknown !== undefined)
        throw new Fault(
          `An error occurred when deserializing the json body of a request: unknown field \`${unknown}\`, expected one of ${known.map((k) => `\`${k}\``).join(", ")}.`,
        );
    }
    const parsed = schema.safeParse(body);
    if (!parsed.success)
      throw new Fault(
        `An error occurred when deserializing the json body of a request: ${id}: ${z.prettifyError(parsed.error)}`,
      );
  };

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, () => {
      server.off("error", reject);
      resolve();
    });
  });

  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= (async () => {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await rm(ownDir ?? socketPath, { recursive: true, force: true });
    })();
    return closed;
  };
  return {
    socketPath,
    requests,
    get state() {
      return state;
    },
    get config() {
      return exportConfig();
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

function upsert<T>(list: T[], key: keyof T, item: T) {
  const index = list.findIndex((existing) => existing[key] === item[key]);
  if (index >= 0) list[index] = item;
  else list.push(item);
}

// RFC 7396 JSON merge patch, which is what Firecracker applies on PATCH /mmds.
function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  const result: Record<string, unknown> =
    target && typeof target === "object" && !Array.isArray(target)
      ? { ...(target as Record<string, unknown>) }
      : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = mergePatch(result[key], value);
  }
  return result;
}
