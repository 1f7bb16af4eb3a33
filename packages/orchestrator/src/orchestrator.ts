// The composition: one state directory, templates built into it, sandboxes started from them. Every
// sandbox gets its own network namespace (same TAP and guest address in all: clones), its own
// copy-on-write disk at the path the snapshot knows (through a private mount namespace), and its own
// page-fault server. Kill undoes the create steps in reverse: Firecracker always before its server.
import { randomBytes } from "node:crypto";
import { copyFile, mkdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { type Logger, silentLogger } from "@sbx/arch";
import { type CpuTemplate, parseCpuTemplate, parseFingerprint } from "@sbx/cpu-template";
import { type FirecrackerProcess, launchFirecracker } from "@sbx/fc-client";
import type { PageFaultServer, PageFaultServerStop } from "@sbx/uffd";
import { z } from "zod";
import {
  type ArtifactResolver,
  defaultArtifactResolver,
  resolveFirecrackerBinary,
} from "./boot-parameters.ts";
import type { OrchestratorConfig, UseMemfdMode } from "./config.ts";
import { OrchestratorError } from "./errors.ts";
import { runCommand } from "./exec.ts";
import { type OrchestratorState, openOrchestratorState } from "./orchestrator-state.ts";
import { processIdentity } from "./process-identity.ts";
import { assertCanResume, DEFAULT_ALIVE, startPageFaultServer } from "./sandbox.ts";
import { newSandboxId } from "./sandbox-id.ts";
import {
  networkStep,
  type SandboxCreateContext,
  stateRecordStep,
  updateSandboxRecord,
} from "./sandbox-steps.ts";
import { writeJsonAtomic } from "./state-dir.ts";
import { requireFromStep, runSteps, type StepEvent, StepList, type StepRunResult } from "./steps.ts";
import {
  type BuildTemplateOptions,
  type BuiltTemplate,
  buildTemplate,
  diskSlotPath,
  ensureDiskSlot,
  readTemplate,
  TEMPLATE_FILES,
} from "./template-build.ts";
import type { TemplateManifest } from "./template-manifest.ts";
import { wrapInVmNamespaces } from "./vm-namespace.ts";
import { waitForConsoleLogged } from "./wait-for-line.ts";

/** A paused sandbox on disk: resume it with `createSandbox({ template, from })`. */
export const pausedSandboxSchema = z.object({
  schemaVersion: z.literal(1),
  id: z.string(),
  template: z.string(),
  pausedAt: z.iso.datetime(),
  vmstate: z.string(),
  /** Full memory first (the template's), then each pause's Diff layer, oldest first. */
  layers: z.array(z.string()).min(1),
  disk: z.string(),
});
export type PausedSandbox = z.infer<typeof pausedSandboxSchema>;

export interface CreateFromTemplateOptions {
  template: string;
  /** Resume a paused sandbox instead of starting from the template's own snapshot. */
  from?: PausedSandbox;
  /**
   * The console line that proves the guest runs again; default any line. `false` skips the wait, for
   * guests that print nothing after a restore (check them another way, e.g. over the network).
   */
  alive?: RegExp | false;
  /** Overrides the config's `useMemfd` for this sandbox. */
  useMemfd?: UseMemfdMode;
  aliveTimeoutMs?: number;
  steps?: (defaults: StepList<TemplateSandboxContext>) => StepList<TemplateSandboxContext>;
  onEvent?: (event: StepEvent) => void;
  signal?: AbortSignal;
}

/** Counters an operator graphs: a fallback is never silent. */
export interface OrchestratorMetrics {
  sandboxesCreated: number;
  createFailures: number;
  /** Creates that wanted Firecracker's memfd (`useMemfd: prefer`) and went on without one. */
  memfdFallbacks: number;
}

export interface TemplateSandboxContext extends SandboxCreateContext {
  options: CreateFromTemplateOptions;
  metrics: OrchestratorMetrics;
  logger: Logger;
  templateDir: string;
  manifest: TemplateManifest;
  diskPath?: string;
  server?: PageFaultServer;
  firecracker?: FirecrackerProcess;
  consoleSince?: number;
}

async function customTemplateOf(manifest: TemplateManifest): Promise<CpuTemplate | undefined> {
  const cpu = manifest.boot.cpuTemplate;
  if (cpu.kind !== "custom") return undefined;
  return parseCpuTemplate(JSON.parse(await readFile(cpu.path, "utf8")));
}

export function defaultTemplateSandboxSteps(): StepList<TemplateSandboxContext> {
  return new StepList<TemplateSandboxContext>([
    {
      name: "compatibility",
      async run(context) {
        const source = parseFingerprint(
          context.manifest.hostFingerprint,
          `template ${context.manifest.name}`,
        );
        assertCanResume(`template "${context.manifest.name}"`, {
          source,
          template: await customTemplateOf(context.manifest),
        });
      },
    },
    stateRecordStep(),
    {
      name: "network",
      run(context, options) {
        // A template without a NIC needs no namespace network; its VM still gets a mount namespace.
        if (!context.manifest.network) return;
        return networkStep().run(context, options);
      },
    },
    {
      name: "disk",
      async run(context) {
        const source = context.options.from?.disk ?? join(context.templateDir, TEMPLATE_FILES.rootfs);
        const disk = join(
          requireFromStep(context.sandboxDir, "the sandbox directory"),
          TEMPLATE_FILES.rootfs,
        );
        // Copy-on-write where the filesystem can (reflink), sparse elsewhere: two sandboxes never share blocks.
        await runCommand(["cp", "--reflink=auto", "--sparse=always", "--", source, disk]);
        await ensureDiskSlot(context.state.config);
        context.diskPath = disk;
      },
    },
    {
      name: "page-fault-server",
      async run(context) {
        const layers = context.options.from?.layers ?? [join(context.templateDir, TEMPLATE_FILES.memory)];
        context.server = await startPageFaultServer(
          requireFromStep(context.sandboxDir, "the sandbox directory"),
          layers,
        );
        return context.server;
      },
    },
    {
      name: "firecracker",
      async run(context, { signal }) {
        const config = context.state.config;
        const binary = (await resolveFirecrackerBinary(config)).path;
        const sandboxDir = requireFromStep(context.sandboxDir, "the sandbox directory");
        const fc = await launchFirecracker({
          ...wrapInVmNamespaces(binary, {
            ...(context.network ? { networkNamespace: context.network.name } : {}),
            binds: [{ source: requireFromStep(context.diskPath, "the disk"), target: diskSlotPath(config) }],
          }),
          id: context.sandboxId,
          arch: config.targetArch,
          socketPath: join(sandboxDir, "firecracker.sock"),
          // Logger and metrics are not in a snapshot: they are set at launch, before the load.
          logPath: join(sandboxDir, "firecracker.log"),
          metricsPath: join(sandboxDir, "firecracker.metrics"),
          uffdRestore: true,
          ...(config.seccompFilter ? { seccompFilter: config.seccompFilter } : {}),
          ...(config.allowNoSeccomp ? { allowNoSeccomp: true } : {}),
          signal,
        });
        context.firecracker = fc;
        const identity = await processIdentity(fc.pid);
        await updateSandboxRecord(context, (record) => ({
          ...record,
          processes: identity ? [...record.processes, { role: "firecracker", identity }] : record.processes,
          sockets: [...record.sockets, fc.socketPath, join(sandboxDir, "uffd.sock")],
        }));
        return async () => {
          await fc.kill({ discard: true, graceMs: 1000 });
        };
      },
    },
    {
      name: "snapshot-load",
      async run(context) {
        const fc = requireFromStep(context.firecracker, "Firecracker");
        context.consoleSince = fc.console.position;
        await fc.client.loadSnapshot({
          snapshot_path: context.options.from?.vmstate ?? join(context.templateDir, TEMPLATE_FILES.vmstate),
          mem_backend: {
            backend_type: "Uffd",
            backend_path: requireFromStep(context.server, "the page-fault server").socketPath,
          },
          // Not saved in snapshots: without it the next pause could not write a Diff snapshot.
          track_dirty_pages: true,
          resume_vm: true,
        });
        const mode = context.options.useMemfd ?? context.state.config.useMemfd;
        if (mode === "off") return;
        const ready = await requireFromStep(context.server, "the page-fault server").ready;
        if (ready.memfd) return;
        if (mode === "require") {
          throw new OrchestratorError(
            "MEMFD_MISSING",
            "Firecracker sent no guest-memory memfd with its userfaultfd (upstream Firecracker never does; it is a fork feature): use a Firecracker that sends one, or set SBX_USE_MEMFD=prefer or off",
          );
        }
        context.metrics.memfdFallbacks += 1;
        context.logger.warn?.(
          { id: context.sandboxId, memfdFallbacks: context.metrics.memfdFallbacks },
          "useMemfd=prefer: Firecracker sent no memfd; pause falls back to Firecracker's own Diff snapshot",
        );
      },
    },
    {
      name: "wait-alive",
      async run(context) {
        const fc = requireFromStep(context.firecracker, "Firecracker");
        if (context.options.alive !== false) {
          await waitForConsoleLogged(fc, context.options.alive ?? DEFAULT_ALIVE, {
            what: `sandbox ${context.sandboxId} to run again`,
            timeoutMs: context.options.aliveTimeoutMs ?? context.state.config.readyTimeoutMs,
            logIntervalMs: context.state.config.waitLogIntervalMs,
            logger: context.logger,
            ...(context.consoleSince === undefined ? {} : { since: context.consoleSince }),
          });
        }
        await updateSandboxRecord(context, (record) => ({ ...record, state: "running" }));
      },
    },
  ]);
}

/** A running sandbox owned by an Orchestrator. */
export class TemplateSandbox implements AsyncDisposable {
  readonly id: string;
  readonly template: string;
  readonly directory: string;
  readonly firecracker: FirecrackerProcess;
  readonly server: PageFaultServer;
  readonly timings: StepRunResult["timings"];
  readonly #context: TemplateSandboxContext;
  readonly #steps: StepRunResult;
  readonly #onGone: () => void;
  #killed: Promise<void> | undefined;

  constructor(context: TemplateSandboxContext, steps: StepRunResult, onGone: () => void) {
    this.#context = context;
    this.#steps = steps;
    this.#onGone = onGone;
    this.id = context.sandboxId;
    this.template = context.manifest.name;
    this.directory = requireFromStep(context.sandboxDir, "the sandbox directory");
    this.firecracker = requireFromStep(context.firecracker, "Firecracker");
    this.server = requireFromStep(context.server, "the page-fault server");
    this.timings = steps.timings;
    // Firecracker would hang on its next fault without its page-fault server: kill it at once.
    void this.server.stopped.then((stop: PageFaultServerStop) => {
      if (stop.reason === "error") void this.kill();
    });
  }

  /** The network namespace the VM lives in (undefined for a template without a NIC). */
  get networkNamespace(): string | undefined {
    return this.#context.network?.name;
  }

  /**
   * Pauses the VM, writes a Diff snapshot layered on the snapshot it came from and a copy of its
   * disk into `{stateDir}/paused/{id}-{n}`, then stops the sandbox. Resume with `createSandbox`.
   */
  async pause(): Promise<PausedSandbox> {
    const config = this.#context.state.config;
    const dir = join(config.stateDir, "paused", `${this.id}-${randomBytes(3).toString("hex")}`);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    try {
      await this.firecracker.client.patchVm({ state: "Paused" });
      const memory = join(dir, "memory.diff");
      await this.firecracker.client.createSnapshot({
        snapshot_type: "Diff",
        snapshot_path: join(dir, "vmstate"),
        mem_file_path: memory,
      });
      const from = this.#context.options.from;
      const layers = [...(from?.layers ?? [join(this.#context.templateDir, TEMPLATE_FILES.memory)]), memory];
      // The VM is paused: its disk is quiet while it is copied.
      await copyFile(requireFromStep(this.#context.diskPath, "the disk"), join(dir, TEMPLATE_FILES.rootfs));
      const paused = pausedSandboxSchema.parse({
        schemaVersion: 1,
        id: this.id,
        template: this.template,
        pausedAt: new Date().toISOString(),
        vmstate: join(dir, "vmstate"),
        layers,
        disk: join(dir, TEMPLATE_FILES.rootfs),
      });
      await writeJsonAtomic(join(dir, "paused.json"), paused);
      await this.kill();
      return paused;
    } catch (error) {
      await rm(dir, { recursive: true, force: true });
      throw error;
    }
  }

  /** Firecracker (graceful, then forced), its page-fault server, network, disk and record. */
  kill(): Promise<void> {
    this.#killed ??= this.#steps.cleanup().finally(this.#onGone);
    return this.#killed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill();
  }
}

export interface OpenOrchestratorOptions {
  logger?: Logger;
  /**
   * Resolve and verify every artifact (Firecracker, kernel, busybox, custom CPU template) before
   * anything starts, with the functions the build uses: a missing or mismatched artifact fails here,
   * with the fix, not in the middle of a build. `sbx serve` does this.
   */
  checkArtifacts?: boolean;
  resolver?: ArtifactResolver;
}

export class Orchestrator implements AsyncDisposable {
  readonly state: OrchestratorState;
  readonly #live = new Set<TemplateSandbox>();
  readonly #logger: Logger;
  readonly #metrics: OrchestratorMetrics = { sandboxesCreated: 0, createFailures: 0, memfdFallbacks: 0 };

  private constructor(state: OrchestratorState, logger: Logger) {
    this.state = state;
    this.#logger = logger;
  }

  /** Takes the state directory's lock and reclaims what a crashed previous run left in it. */
  static async open(
    config: OrchestratorConfig,
    options: OpenOrchestratorOptions = {},
  ): Promise<Orchestrator> {
    const logger = options.logger ?? silentLogger;
    if (options.checkArtifacts) {
      try {
        await (options.resolver ?? defaultArtifactResolver).resolve(config);
      } catch (cause) {
        throw new OrchestratorError(
          "ARTIFACT_INVALID",
          `an artifact is missing or wrong: ${(cause as Error).message} (\`sbx doctor\` lists every check with its fix)`,
          { cause, details: { code: (cause as { code?: string }).code } },
        );
      }
    }
    return new Orchestrator(await openOrchestratorState(config, { logger }), logger);
  }

  get config(): OrchestratorConfig {
    return this.state.config;
  }

  metrics(): OrchestratorMetrics {
    return { ...this.#metrics };
  }

  /** The sandboxes this orchestrator started and has not killed. */
  get sandboxes(): TemplateSandbox[] {
    return [...this.#live];
  }

  buildTemplate(options: BuildTemplateOptions): Promise<BuiltTemplate> {
    return buildTemplate(this.state, { logger: this.#logger, ...options });
  }

  async createSandbox(options: CreateFromTemplateOptions): Promise<TemplateSandbox> {
    const { directory, manifest } = await readTemplate(this.config, options.template);
    if (options.from && options.from.template !== manifest.name) {
      throw new OrchestratorError(
        "INVALID_OPTIONS",
        `paused sandbox ${options.from.id} belongs to template "${options.from.template}", not "${manifest.name}"`,
      );
    }
    if (this.#live.size >= this.config.maxSandboxes) {
      throw new OrchestratorError(
        "INVALID_OPTIONS",
        `maxSandboxes (${this.config.maxSandboxes}) are running`,
      );
    }
    return this.state.createLimiter.run(async () => {
      const context: TemplateSandboxContext = {
        state: this.state,
        sandboxId: newSandboxId(),
        template: manifest.name,
        options,
        templateDir: directory,
        manifest,
        metrics: this.#metrics,
        logger: this.#logger,
      };
      const defaults = defaultTemplateSandboxSteps();
      const steps = options.steps ? options.steps(defaults) : defaults;
      let result: StepRunResult;
      try {
        result = await runSteps(steps, context, {
          ...(options.signal ? { signal: options.signal } : {}),
          ...(options.onEvent ? { onEvent: options.onEvent } : {}),
        });
      } catch (error) {
        this.#metrics.createFailures += 1;
        throw error;
      }
      this.#metrics.sandboxesCreated += 1;
      if (!context.firecracker || !context.server || !context.sandboxDir) {
        await result.cleanup();
        throw new OrchestratorError("STEP_FAILED", "the create steps finished without a running VM");
      }
      const sandbox = new TemplateSandbox(context, result, () => this.#live.delete(sandbox));
      this.#live.add(sandbox);
      this.#logger.info?.({ id: sandbox.id, template: manifest.name }, "sandbox created");
      return sandbox;
    });
  }

  /** Kills every live sandbox, then releases the state directory. */
  async close(): Promise<void> {
    const results = await Promise.allSettled([...this.#live].map((s) => s.kill()));
    await this.state.close();
    const failed = results.filter((r) => r.status === "rejected");
    if (failed.length > 0) {
      throw new OrchestratorError("STEP_CLEANUP_FAILED", `${failed.length} sandboxes did not stop cleanly`, {
        cause: (failed[0] as PromiseRejectedResult).reason,
      });
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Reads `paused.json` from a paused sandbox's directory. */
export async function readPausedSandbox(directory: string): Promise<PausedSandbox> {
  const parsed = pausedSandboxSchema.safeParse(
    JSON.parse(await readFile(join(directory, "paused.json"), "utf8")),
  );
  if (!parsed.success) {
    throw new OrchestratorError("STATE_RECORD_INVALID", `${directory}/paused.json is not a paused sandbox`, {
      cause: parsed.error,
    });
  }
  return parsed.data;
}
