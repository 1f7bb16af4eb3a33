// `sbx serve` owns the sandboxes (their page-fault servers live in its process); the CLI's other
// commands talk to it over a root-only Unix socket in the state directory: one JSON line each way.
import { chmod, rm } from "node:fs/promises";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { z } from "zod";
import { listPausedSandboxes } from "./builds.ts";
import type { OrchestratorConfig } from "./config.ts";
import { OrchestratorError } from "./errors.ts";
import type { Orchestrator } from "./orchestrator.ts";
import type { Sandbox } from "./sandbox.ts";
import { findByIdPrefix } from "./sandbox-id.ts";
import type { ExposedPort } from "./sandbox-network.ts";
import { templateDrift } from "./template-build.ts";
import { templateRequestSchema } from "./template-inputs.ts";

/** Requests are small; anything longer is not a request. */
const MAX_LINE_BYTES = 64 * 1024;

export const controlRequestSchema = z.discriminatedUnion("op", [
  z.object({ op: z.literal("list") }),
  z.object({
    op: z.literal("create"),
    template: z.string().min(1),
    /** A regular expression for the console line that proves the guest runs; default any line. */
    alive: z.string().max(1024).optional(),
  }),
  z.object({ op: z.literal("pause"), id: z.string().min(1) }),
  z.object({ op: z.literal("resume"), paused: z.string().min(1), alive: z.string().max(1024).optional() }),
  z.object({ op: z.literal("kill"), id: z.string().min(1) }),
  z.object({ op: z.literal("fork"), id: z.string().min(1), count: z.number().int().min(1).max(64) }),
  z.object({ op: z.literal("gc") }),
  z.object({ op: z.literal("ports"), id: z.string().min(1) }),
  z.object({
    op: z.literal("expose"),
    id: z.string().min(1),
    port: z.number().int().min(1).max(65_535),
    publish: z.boolean().default(false),
  }),
  z.object({ op: z.literal("template-rm"), name: z.string().min(1) }),
  z.object({ op: z.literal("paused-rm"), paused: z.string().min(1) }),
  z.object({
    op: z.literal("build"),
    request: templateRequestSchema,
    readyMarker: z.string().max(1024).optional(),
    force: z.boolean().default(false),
  }),
]);
export type ControlRequest = z.input<typeof controlRequestSchema>;

const controlResponseSchema = z.union([
  z.object({ ok: z.literal(true), result: z.unknown() }),
  z.object({
    ok: z.literal(false),
    error: z.object({
      code: z.string(),
      message: z.string(),
      details: z.record(z.string(), z.unknown()).optional(),
    }),
  }),
]);

export function controlSocketPath(config: Pick<OrchestratorConfig, "stateDir">): string {
  return join(config.stateDir, "sbx.sock");
}

export interface SandboxSummary {
  id: string;
  template: string;
  build: string;
  pid: number;
  networkNamespace: string | null;
}

function summary(sandbox: Sandbox): SandboxSummary {
  return {
    id: sandbox.id,
    template: sandbox.template,
    build: sandbox.build.id,
    pid: sandbox.firecracker.pid,
    networkNamespace: sandbox.networkNamespace ?? null,
  };
}

function portSummary(port: ExposedPort) {
  return {
    guestPort: port.guestPort,
    host: port.host,
    port: port.port,
    ...(port.hostPort === undefined ? {} : { hostPort: port.hostPort }),
  };
}

function pattern(source: string | undefined): RegExp | undefined {
  if (source === undefined) return undefined;
  try {
    return new RegExp(source, "m");
  } catch (cause) {
    throw new OrchestratorError("INVALID_OPTIONS", `not a regular expression: ${source}`, { cause });
  }
}

async function handle(orchestrator: Orchestrator, request: z.output<typeof controlRequestSchema>) {
  const live = () => orchestrator.sandboxes;
  const byPrefix = (prefix: string) => findByIdPrefix(prefix, live());
  const pausedByPrefix = async (prefix: string) =>
    findByIdPrefix(prefix, await listPausedSandboxes(orchestrator.config));
  switch (request.op) {
    case "list":
      return {
        sandboxes: live().map(summary),
        paused: await listPausedSandboxes(orchestrator.config),
      };
    case "create": {
      const alive = pattern(request.alive);
      const sandbox = await orchestrator.createSandbox({
        template: request.template,
        ...(alive ? { alive } : {}),
      });
      return { ...summary(sandbox), timings: sandbox.timings };
    }
    case "pause":
      return byPrefix(request.id).pause();
    case "resume": {
      const from = await pausedByPrefix(request.paused);
      const alive = pattern(request.alive);
      const sandbox = await orchestrator.createSandbox({ from, ...(alive ? { alive } : {}) });
      return { ...summary(sandbox), timings: sandbox.timings };
    }
    case "fork": {
      const forks = await byPrefix(request.id).fork(request.count);
      return { forks: forks.map(summary) };
    }
    case "gc":
      return orchestrator.gc();
    case "ports": {
      const sandbox = byPrefix(request.id);
      return { id: sandbox.id, ports: sandbox.ports().map(portSummary) };
    }
    case "expose": {
      const sandbox = byPrefix(request.id);
      return {
        id: sandbox.id,
        ...portSummary(await sandbox.expose(request.port, { publish: request.publish })),
      };
    }
    case "template-rm":
      await orchestrator.removeTemplate(request.name);
      return { name: request.name, removed: true };
    case "paused-rm": {
      const paused = await pausedByPrefix(request.paused);
      await orchestrator.removePausedSandbox(paused.id);
      return { id: paused.id, removed: true };
    }
    case "kill": {
      const sandbox = byPrefix(request.id);
      await sandbox.kill();
      return { id: sandbox.id, killed: true };
    }
    case "build": {
      const drift = request.force ? "forced" : await templateDrift(orchestrator.config, request.request);
      if (drift === null) return { name: request.request.name, rebuilt: false, reason: "current" };
      const readyMarker = pattern(request.readyMarker);
      const built = await orchestrator.buildTemplate({
        request: request.request,
        ...(readyMarker ? { readyMarker } : {}),
      });
      return {
        name: built.manifest.template,
        build: built.id,
        rebuilt: true,
        reason: drift,
        directory: built.directory,
        timings: built.timings,
      };
    }
  }
}

function errorBody(error: unknown) {
  const code =
    error instanceof OrchestratorError ? error.code : ((error as { code?: string })?.code ?? "UNEXPECTED");
  const message = (error as Error)?.message ?? String(error);
  return {
    code: String(code),
    message,
    ...(error instanceof OrchestratorError ? { details: { ...error.details } } : {}),
  };
}

function readLine(socket: Socket, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let buffered = "";
    const onData = (chunk: Buffer) => {
      buffered += chunk.toString("utf8");
      const newline = buffered.indexOf("\n");
      if (newline >= 0) {
        cleanup();
        resolve(buffered.slice(0, newline));
      } else if (buffered.length > limit) {
        cleanup();
        reject(new OrchestratorError("INVALID_OPTIONS", `a control message is at most ${limit} bytes`));
      }
    };
    const onEnd = () => {
      cleanup();
      reject(new OrchestratorError("COMMAND_FAILED", "the control connection closed before a full line"));
    };
    const cleanup = () => {
      socket.off("data", onData);
      socket.off("end", onEnd);
      socket.off("error", onEnd);
    };
    socket.on("data", onData);
    socket.on("end", onEnd);
    socket.on("error", onEnd);
  });
}

/** Serves control requests for `orchestrator` until the returned server is closed. */
export async function serveControl(
  orchestrator: Orchestrator,
  socketPath = controlSocketPath(orchestrator.config),
): Promise<Server> {
  // The state directory's lock says no other orchestrator runs here: a socket file left is stale.
  await rm(socketPath, { force: true });
  const server = createServer((socket) => {
    socket.on("error", () => {}); // a client that went away; its request is still finished
    void (async () => {
      let response: unknown;
      try {
        const line = await readLine(socket, MAX_LINE_BYTES);
        const parsed = controlRequestSchema.safeParse(JSON.parse(line));
        if (!parsed.success) {
          throw new OrchestratorError(
            "INVALID_OPTIONS",
            `bad control request: ${z.prettifyError(parsed.error)}`,
          );
        }
        response = { ok: true, result: await handle(orchestrator, parsed.data) };
      } catch (error) {
        response = { ok: false, error: errorBody(error) };
      }
      socket.end(`${JSON.stringify(response)}\n`);
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ path: socketPath }, () => resolve());
  });
  await chmod(socketPath, 0o600);
  return server;
}

/** Sends one request to `sbx serve`; rejects with the server's typed error. */
export async function controlRequest(
  socketPath: string,
  request: ControlRequest,
  options: { timeoutMs?: number } = {},
): Promise<unknown> {
  const socket = createConnection({ path: socketPath });
  const timeoutMs = options.timeoutMs ?? 15 * 60_000;
  const timer = setTimeout(
    () => socket.destroy(new Error(`no answer from ${socketPath} in ${timeoutMs} ms`)),
    timeoutMs,
  );
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    socket.write(`${JSON.stringify(request)}\n`);
    const line = await readLine(socket, 16 * 1024 * 1024);
    const response = controlResponseSchema.parse(JSON.parse(line));
    if (response.ok) return response.result;
    throw new OrchestratorError(
      (response.error.code as ConstructorParameters<typeof OrchestratorError>[0]) ?? "COMMAND_FAILED",
      response.error.message,
      { details: response.error.details ?? {} },
    );
  } finally {
    clearTimeout(timer);
    socket.destroy();
  }
}

/** True when `sbx serve` answers on the state directory's control socket. */
export async function controlServerRunning(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ path: socketPath });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}
