// A sandbox's lifecycle from a snapshot: the page-fault server restores its memory, Firecracker loads
// the VM state, and the guest runs on. Create is a named StepList a fork can edit; pause writes a Diff
// snapshot that becomes the next memory layer; kill stops Firecracker before the page-fault server.
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { type CpuTemplate, checkCompatibility, type Fingerprint, hostFingerprint } from "@sbx/cpu-template";
import { type FirecrackerProcess, launchFirecracker } from "@sbx/fc-client";
import { PageFaultServer, type PageFaultServerStop } from "@sbx/uffd";
import { OrchestratorError } from "./errors.ts";
import { newSandboxId } from "./sandbox-id.ts";
import { runSteps, StepList, type StepRunResult } from "./steps.ts";

/** A snapshot to start from: the VM state and the memory layers (full memory first, diffs after). */
export interface SnapshotLayers {
  vmstate: string;
  layers: string[];
}

export interface CreateSandboxOptions {
  firecrackerBin: string;
  snapshot: SnapshotLayers;
  /** Where the sandbox keeps its sockets, logs and snapshots (created; removed on kill). */
  directory: string;
  id?: string;
  /** The console line that proves the guest runs again after the restore. */
  alive?: RegExp;
  aliveTimeoutMs?: number;
  /**
   * The template's build-host fingerprint (and CPU template): when given, the first step refuses a
   * host that could not run what the guest was told it may use. `target` defaults to this host.
   */
  compatibility?: { source: Fingerprint; template?: CpuTemplate; target?: Fingerprint };
  /** Edit the create steps (insert, replace, remove by name). */
  steps?: (defaults: StepList<SandboxContext>) => StepList<SandboxContext>;
  signal?: AbortSignal;
}

export interface SandboxContext {
  id: string;
  directory: string;
  options: CreateSandboxOptions;
  server?: PageFaultServer;
  firecracker?: FirecrackerProcess;
  consoleSince?: number;
}

export const DEFAULT_ALIVE = /\S/;

/**
 * Refuses (TEMPLATE_INVALID, naming the missing features) a host that could not run what a snapshot's
 * guest was told it may use: a snapshot moved to an older CPU dies with SIGILL.
 */
export function assertCanResume(
  what: string,
  check: { source: Fingerprint; template?: CpuTemplate | undefined; target?: Fingerprint },
): void {
  const verdict = checkCompatibility({
    source: check.source,
    target: check.target ?? hostFingerprint(),
    ...(check.template ? { template: check.template } : {}),
  });
  if (!verdict.compatible)
    throw new OrchestratorError(
      "TEMPLATE_INVALID",
      `this host cannot resume ${what}: ${[...verdict.reasons, ...verdict.missing.map((m) => `${m.name} (${m.where})`)].join("; ")}`,
      { details: { missing: verdict.missing, reasons: verdict.reasons } },
    );
}

/**
 * A listening page-fault server at `{directory}/uffd.sock` for a memory layer stack (full memory
 * first). Dirty pages come from Firecracker's own Diff snapshot, so the server does not track them.
 */
export async function startPageFaultServer(
  directory: string,
  layers: readonly string[],
): Promise<PageFaultServer> {
  const server = new PageFaultServer({
    socketPath: join(directory, "uffd.sock"),
    layers: layers.map((path) => ({ path })),
    trackDirty: false,
  });
  await server.listen();
  return server;
}

export function defaultSandboxSteps(): StepList<SandboxContext> {
  return new StepList<SandboxContext>([
    {
      name: "compatibility",
      run(context) {
        const check = context.options.compatibility;
        if (check) assertCanResume("the template", check);
      },
    },
    {
      name: "directory",
      async run(context) {
        await mkdir(context.directory, { recursive: true, mode: 0o700 });
        return () => rm(context.directory, { recursive: true, force: true });
      },
    },
    {
      name: "page-fault-server",
      async run(context) {
        context.server = await startPageFaultServer(context.directory, context.options.snapshot.layers);
        return context.server;
      },
    },
    {
      name: "firecracker",
      async run(context, { signal }) {
        const fc = await launchFirecracker({
          binary: context.options.firecrackerBin,
          id: context.id,
          logPath: join(context.directory, "firecracker.log"),
          signal,
        });
        context.firecracker = fc;
        return fc;
      },
    },
    {
      name: "snapshot-load",
      async run(context) {
        const fc = context.firecracker as FirecrackerProcess;
        context.consoleSince = fc.console.position;
        await fc.client.loadSnapshot({
          snapshot_path: context.options.snapshot.vmstate,
          mem_backend: { backend_type: "Uffd", backend_path: (context.server as PageFaultServer).socketPath },
          // Not saved in snapshots: without it the next pause could not write a Diff snapshot.
          track_dirty_pages: true,
          resume_vm: true,
        });
      },
    },
    {
      name: "wait-alive",
      async run(context) {
        const fc = context.firecracker as FirecrackerProcess;
        await fc.waitForConsole(context.options.alive ?? DEFAULT_ALIVE, {
          timeoutMs: context.options.aliveTimeoutMs ?? 30_000,
          ...(context.consoleSince === undefined ? {} : { since: context.consoleSince }),
        });
      },
    },
  ]);
}

export class Sandbox implements AsyncDisposable {
  readonly id: string;
  readonly directory: string;
  readonly firecracker: FirecrackerProcess;
  readonly server: PageFaultServer;
  readonly timings: StepRunResult["timings"];
  readonly #snapshot: SnapshotLayers;
  #killed: Promise<void> | undefined;
  #pauses = 0;

  constructor(
    context: Required<Pick<SandboxContext, "firecracker" | "server">> & SandboxContext,
    timings: StepRunResult["timings"],
  ) {
    this.id = context.id;
    this.directory = context.directory;
    this.firecracker = context.firecracker;
    this.server = context.server;
    this.timings = timings;
    this.#snapshot = context.options.snapshot;
    // Firecracker hangs on its next fault without the page-fault server: kill it at once.
    void this.server.stopped.then((stop: PageFaultServerStop) => {
      if (stop.reason === "error") void this.kill();
    });
  }

  /**
   * Pauses the VM and writes a Diff snapshot: the pages written since the restore, layered on the
   * snapshot this sandbox came from. Returns what `createSandbox` resumes from; the VM stays paused.
   */
  async pause(): Promise<SnapshotLayers> {
    const n = ++this.#pauses;
    const vmstate = join(this.directory, `vmstate.${n}`);
    const memory = join(this.directory, `mem.diff.${n}`);
    await this.firecracker.client.patchVm({ state: "Paused" });
    await this.firecracker.client.createSnapshot({
      snapshot_type: "Diff",
      snapshot_path: vmstate,
      mem_file_path: memory,
    });
    return { vmstate, layers: [...this.#snapshot.layers, memory] };
  }

  /** Firecracker first (graceful, then forced), then the page-fault server (never before), then files. */
  kill(options: { keepFiles?: boolean } = {}): Promise<void> {
    this.#killed ??= (async () => {
      await this.firecracker.kill({ discard: true, graceMs: 1000 });
      await this.server.close();
      if (!options.keepFiles) await rm(this.directory, { recursive: true, force: true });
    })();
    return this.#killed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill();
  }
}

/** `await using sandbox = await createSandbox({ ... })`: a failure at any step undoes the ones before. */
export async function createSandbox(options: CreateSandboxOptions): Promise<Sandbox> {
  if (options.snapshot.layers.length === 0)
    throw new OrchestratorError(
      "INVALID_OPTIONS",
      "a snapshot needs at least its full memory file as a layer",
    );
  const id = options.id ?? newSandboxId();
  const context: SandboxContext = { id, directory: options.directory, options };
  const steps = options.steps ? options.steps(defaultSandboxSteps()) : defaultSandboxSteps();
  const result = await runSteps(steps, context, { ...(options.signal ? { signal: options.signal } : {}) });
  if (!context.firecracker || !context.server) {
    await result.cleanup();
    throw new OrchestratorError(
      "STEP_FAILED",
      "the create steps finished without a Firecracker and a page-fault server",
    );
  }
  return new Sandbox(
    context as Required<Pick<SandboxContext, "firecracker" | "server">> & SandboxContext,
    result.timings,
  );
}
