// The one sandbox lifecycle. A sandbox starts from a build (a template's, or a pause's): its own
// network namespace, its own disk cloned from the build's, a page-fault server that serves memory by
// the build's header, then Firecracker loads the VM state and the guest runs on. Create is a named
// StepList a fork can edit; pause makes a new immutable build; kill undoes the create steps in reverse,
// Firecracker always before its page-fault server.

import { link, readFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { AgentClient, firecrackerVsockTransport } from "@sbx/agent";
import { type Logger, silentLogger } from "@sbx/arch";
import {
  assertSnapshotLoadable,
  type CustomCpuTemplate,
  checkCompatibility,
  type Fingerprint,
  parseCustomCpuTemplate,
  parseFingerprint,
} from "@sbx/cpu-template";
import type { CgroupLimits, FirecrackerProcess } from "@sbx/fc-client";
import type { BuildStore, RemoteMemory } from "@sbx/store";
import {
  type MemoryHeader,
  PageFaultServer,
  type PageFaultServerStop,
  type RemoteMemorySource,
} from "@sbx/uffd";
import { buildDir, type PausedSandbox, readBuild, readBuildHeader, readTemplatePointer } from "./builds.ts";
import type { UseMemfdMode } from "./config.ts";
import { cloneFile } from "./disk-clone.ts";
import { type EgressPolicyInput, resolveEgressPolicy } from "./egress-policy.ts";
import { OrchestratorError } from "./errors.ts";
import { firecrackerFor, thisHostFingerprint } from "./host-facts.ts";
import { defaultVmLimits, launchModeFor } from "./jail-plan.ts";
import { readProcessMemory, type SandboxMemoryStats, sandboxMemoryStats } from "./memory-stats.ts";
import type { NetworkPool } from "./netns-pool.ts";
import type { OrchestratorState } from "./orchestrator-state.ts";
import { type PauseOptions, pauseSandbox } from "./pause.ts";
import { processIdentity } from "./process-identity.ts";
import { newSandboxId } from "./sandbox-id.ts";
import type { ExposedPort, SandboxNetwork } from "./sandbox-network.ts";
import {
  networkStep,
  type SandboxCreateContext,
  stateRecordStep,
  updateSandboxRecord,
} from "./sandbox-steps.ts";
import { requireFromStep, runSteps, type StepEvent, StepList, type StepRunResult } from "./steps.ts";
import { ensureLocalBuild, memorySourcesOf } from "./store-sync.ts";
import { AGENT_VSOCK_PORT, AGENT_VSOCK_SOCKET, ensureDiskSlot } from "./template-build.ts";
import { BUILD_FILES, type BuildManifest } from "./template-manifest.ts";
import { uidsInUse } from "./uid-pool.ts";
import { exists, type LaunchedVm, launchVm } from "./vm-launch.ts";
import { waitForConsoleLogged } from "./wait-for-line.ts";
import { readWorkingSet } from "./working-set-record.ts";

/**
 * An object whose every method awaits `target` first: `sandbox.commands.run(...)` reads as a plain call
 * while the agent connection is made on first use.
 */
function lazyFacade<T extends object>(target: () => Promise<T>): T {
  return new Proxy({} as T, {
    get(_object, property) {
      return async (...args: unknown[]) => {
        const resolved = (await target()) as Record<PropertyKey, unknown>;
        const member = resolved[property];
        if (typeof member !== "function")
          throw new OrchestratorError("INVALID_OPTIONS", `the agent has no operation ${String(property)}`);
        return (member as (...a: unknown[]) => unknown).apply(resolved, args);
      };
    },
  });
}

/** Any console line: the default proof that a restored guest runs again. */
export const DEFAULT_ALIVE = /\S/;

/** What to start a sandbox from (template, paused sandbox or build) and how. */
export interface CreateSandboxOptions {
  /** Start from the build this template name points at now. */
  template?: string;
  /** Resume a paused sandbox (see `Orchestrator.pausedSandboxes()`). */
  from?: PausedSandbox;
  /** Start from a build by id (a template's or a pause's). */
  build?: string;
  /**
   * The console line that proves the guest runs again; default any line. `false` skips the wait, for
   * guests that print nothing after a restore (check them another way, e.g. over the network).
   */
  alive?: RegExp | false;
  aliveTimeoutMs?: number;
  /** Overrides the config's `useMemfd` for this sandbox. */
  useMemfd?: UseMemfdMode;
  /**
   * The jailed VM's cgroup limits, each overriding the build's default (its vCPUs as CPUs, its guest
   * memory plus 128 MiB, 64 pids). Unjailed (SBX_UNJAILED) there are no limits.
   */
  limits?: CgroupLimits;
  /** What this sandbox may reach, layered on the config's and the template's policy. */
  egress?: EgressPolicyInput;
  /** The host the compatibility step checks the build against; default this one (a dry run names another). */
  compatibilityTarget?: Fingerprint;
  /** Edit the create steps (insert, replace, remove by name). */
  steps?: (defaults: StepList<SandboxContext>) => StepList<SandboxContext>;
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

export const newMetrics = (): OrchestratorMetrics => ({
  sandboxesCreated: 0,
  createFailures: 0,
  memfdFallbacks: 0,
});

/** What the create steps share: the build, its header and memory sources, and what each step made. */
export interface SandboxContext extends SandboxCreateContext {
  options: CreateSandboxOptions;
  metrics: OrchestratorMetrics;
  logger: Logger;
  /** The build this sandbox starts from, and its memory header. */
  build: BuildManifest;
  header: MemoryHeader;
  /** Where each build the header names keeps its memory file. */
  memoryFiles: Record<string, string>;
  /** Builds whose memory stays in the build store: their chunks come when the guest needs them. */
  remoteMemory?: Record<string, RemoteMemorySource>;
  diskPath?: string;
  server?: PageFaultServer;
  /** The VM as launched: jailed or not, the paths it sees, its snapshot and kill. */
  vm?: LaunchedVm;
  firecracker?: FirecrackerProcess;
  consoleSince?: number;
}

/**
 * Refuses (TEMPLATE_INVALID, naming the missing features) a host that could not run what a snapshot's
 * guest was told it may use: a snapshot moved to an older CPU dies with SIGILL.
 */
export function assertCanResume(
  what: string,
  check: { source: Fingerprint; template?: CustomCpuTemplate | undefined; target?: Fingerprint },
): void {
  const verdict = checkCompatibility({
    source: check.source,
    target: check.target ?? thisHostFingerprint(),
    ...(check.template ? { template: check.template } : {}),
  });
  if (!verdict.compatible)
    throw new OrchestratorError(
      "TEMPLATE_INVALID",
      `this host cannot resume ${what}: ${[...verdict.reasons, ...verdict.missing.map((m) => `${m.name} (${m.where})`)].join("; ")}`,
      { details: { missing: verdict.missing, reasons: verdict.reasons } },
    );
}

/** The custom CPU template a build's guest was booted with, from the build's own copy. */
async function cpuTemplateOf(
  state: OrchestratorState,
  build: BuildManifest,
): Promise<CustomCpuTemplate | undefined> {
  if (!build.files[BUILD_FILES.cpuTemplate]) return undefined;
  const text = await readFile(join(buildDir(state.config, build.id), BUILD_FILES.cpuTemplate), "utf8");
  return parseCustomCpuTemplate(JSON.parse(text));
}

/** The create steps, in order: a fork edits this list. */
export function defaultSandboxSteps(): StepList<SandboxContext> {
  return new StepList<SandboxContext>([
    {
      name: "compatibility",
      async run(context) {
        const source = parseFingerprint(context.build.hostFingerprint, `build ${context.build.id}`);
        assertCanResume(`build ${context.build.id} of template "${context.build.template}"`, {
          source,
          template: await cpuTemplateOf(context.state, context.build),
          ...(context.options.compatibilityTarget ? { target: context.options.compatibilityTarget } : {}),
        });
      },
    },
    stateRecordStep(),
    {
      name: "network",
      run(context, options) {
        // A build without a NIC needs no namespace network; its VM still gets a mount namespace.
        if (!context.build.network) return;
        return networkStep().run(context, options);
      },
    },
    {
      name: "disk",
      async run(context) {
        if (!context.build.files[BUILD_FILES.rootfs]) return;
        const disk = join(requireFromStep(context.sandboxDir, "the sandbox directory"), BUILD_FILES.rootfs);
        // A reflink clone where the state directory can (no bytes copied), a sparse copy elsewhere.
        await cloneFile(join(buildDir(context.state.config, context.build.id), BUILD_FILES.rootfs), disk);
        await ensureDiskSlot(context.state.config);
        context.diskPath = disk;
      },
    },
    {
      name: "firecracker",
      async run(context, { signal }) {
        const config = context.state.config;
        const sandboxDir = requireFromStep(context.sandboxDir, "the sandbox directory");
        const firecracker = await firecrackerFor(context.state);
        // A snapshot format this Firecracker cannot load is refused with both versions, before it starts.
        assertSnapshotLoadable({
          snapshotFirecrackerVersion: context.build.firecrackerVersion,
          runningFirecrackerVersion: firecracker.version,
        });
        const mode = await launchModeFor(context.state);
        let owner: { uid: number; gid: number } | undefined;
        if (mode.jailed) {
          // The uid is the record's before the jail exists: a crash leaves nothing the record does not name.
          const uid = context.state.uidPool.allocate(await uidsInUse());
          owner = { uid, gid: uid };
          try {
            await updateSandboxRecord(context, (record) => ({
              ...record,
              jail: {
                uid,
                gid: uid,
                directory: join(mode.jailer.chrootBaseDir, basename(firecracker.path), context.sandboxId),
                cgroups: [],
              },
            }));
          } catch (error) {
            context.state.uidPool.release(uid);
            throw error;
          }
        }
        const releaseOwner = () => {
          if (owner) context.state.uidPool.release(owner.uid);
        };
        let vm: LaunchedVm;
        try {
          vm = await launchVm({
            mode,
            config,
            id: context.sandboxId,
            firecrackerBinary: firecracker.path,
            workDir: sandboxDir,
            apiSocketPath: join(sandboxDir, "firecracker.sock"),
            // Logger and metrics are not in a snapshot: they are set at launch, before the load.
            logPath: join(sandboxDir, "firecracker.log"),
            metricsPath: join(sandboxDir, "firecracker.metrics"),
            ...(context.network ? { networkNamespace: context.network.name } : {}),
            ...(context.diskPath ? { disk: context.diskPath } : {}),
            vmstate: join(buildDir(config, context.build.id), BUILD_FILES.vmstate),
            ...(owner ? { owner } : {}),
            limits: {
              ...defaultVmLimits({
                vcpuCount: context.build.boot?.vcpuCount,
                memoryBytes: context.build.memory.sizeBytes,
              }),
              ...context.options.limits,
            },
            uffdRestore: true,
            signal,
            logger: context.logger,
          });
        } catch (error) {
          releaseOwner();
          throw error;
        }
        context.vm = vm;
        const fc = vm.fc;
        context.firecracker = fc;
        const identity = await processIdentity(fc.pid);
        await updateSandboxRecord(context, (record) => ({
          ...record,
          processes: identity ? [...record.processes, { role: "firecracker", identity }] : record.processes,
          sockets: [...record.sockets, fc.socketPath, vm.uffdSocket.path],
          ...(record.jail && fc.jail ? { jail: { ...record.jail, cgroups: [...fc.jail.cgroupDirs] } } : {}),
        }));
        return async () => {
          try {
            await vm.kill({ discard: true, graceMs: 1000 });
          } finally {
            releaseOwner();
          }
        };
      },
    },
    {
      name: "page-fault-server",
      async run(context) {
        const vm = requireFromStep(context.vm, "the VM");
        // Prefetched from the handshake on, between the guest's faults; a build without one (or with an
        // unreadable one) restores on demand.
        const workingSet = context.build.files[BUILD_FILES.workingSet]
          ? await readWorkingSet(
              join(buildDir(context.state.config, context.build.id), BUILD_FILES.workingSet),
              context.build.memory.sizeBytes,
              context.logger,
            )
          : undefined;
        const server = new PageFaultServer({
          // Inside the VM's chroot when jailed, owned by its uid; only that Firecracker (by pid) may connect.
          socketPath: vm.uffdSocket.path,
          ...(vm.uffdSocket.owner
            ? { owner: vm.uffdSocket.owner, expectedPeerUid: vm.uffdSocket.owner.uid }
            : {}),
          expectedPeerPid: vm.fc.pid,
          memory: {
            header: context.header,
            paths: context.memoryFiles,
            ...(context.remoteMemory ? { remote: context.remoteMemory } : {}),
          },
          ...(workingSet ? { workingSet: workingSet.ranges } : {}),
          // Dirty pages come from Firecracker's own Diff snapshot.
          trackDirty: false,
          logger: context.logger,
        });
        await server.listen();
        context.server = server;
        // Firecracker goes before its page-fault server, or it would hang on its next fault.
        return async () => {
          await vm.kill({ discard: true, graceMs: 1000 });
          await server[Symbol.asyncDispose]();
        };
      },
    },
    {
      name: "snapshot-load",
      async run(context) {
        const fc = requireFromStep(context.firecracker, "Firecracker");
        const vm = requireFromStep(context.vm, "the VM");
        const sandboxDir = requireFromStep(context.sandboxDir, "the sandbox directory");
        context.consoleSince = fc.console.position;
        await whileServing(
          context,
          fc.client.loadSnapshot({
            snapshot_path: requireFromStep(vm.vmPaths.vmstate, "the jailed vmstate"),
            mem_backend: { backend_type: "Uffd", backend_path: vm.vmPaths.uffdSocket },
            // Not saved in snapshots: without it the next pause could not write a Diff snapshot.
            track_dirty_pages: true,
            resume_vm: true,
          }),
        );
        // The agent (and `sbx exec` from another process) connect in the sandbox directory: a jailed
        // VM's vsock socket is in its chroot, and a hard link to a socket reaches the same listener.
        const vsockLink = join(sandboxDir, AGENT_VSOCK_SOCKET);
        if (vm.jailed && (await exists(vm.vsockSocket)) && !(await exists(vsockLink)))
          await link(vm.vsockSocket, vsockLink);
        const server = requireFromStep(context.server, "the page-fault server");
        const mode = context.options.useMemfd ?? context.state.config.useMemfd;
        if (mode === "off") return;
        if ((await server.ready).memfd) return;
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
          const alive = waitForConsoleLogged(fc, context.options.alive ?? DEFAULT_ALIVE, {
            what: `sandbox ${context.sandboxId} to run again`,
            timeoutMs: context.options.aliveTimeoutMs ?? context.state.config.readyTimeoutMs,
            logIntervalMs: context.state.config.waitLogIntervalMs,
            logger: context.logger,
            ...(context.consoleSince === undefined ? {} : { since: context.consoleSince }),
          }).then(() => undefined);
          await whileServing(context, alive);
        }
        await updateSandboxRecord(context, (record) => ({ ...record, state: "running" }));
      },
    },
  ]);
}

/**
 * `work` (the load, the wait for the guest), unless the page-fault server stops first: a remote chunk
 * that cannot be had means a guest that never runs, so that fails now, with why, not at a timeout (the
 * undo kills Firecracker). Firecracker failing because its server went away reports the server's stop.
 */
async function whileServing<T>(context: SandboxContext, work: Promise<T>): Promise<T> {
  const server = requireFromStep(context.server, "the page-fault server");
  const stopped = server.stopped.then((stop) => ({ stop }));
  let outcome: { value: T } | { stop: PageFaultServerStop };
  try {
    outcome = await Promise.race([work.then((value) => ({ value })), stopped]);
  } catch (error) {
    const late = await Promise.race([stopped, sleep(SERVER_STOP_GRACE_MS).then(() => undefined)]);
    if (late?.stop.error) throw serverStoppedError(context.sandboxId, late.stop);
    throw error;
  }
  if ("stop" in outcome) {
    work.catch(() => undefined);
    throw serverStoppedError(context.sandboxId, outcome.stop);
  }
  return outcome.value;
}

/** How long a failed load waits to learn whether its page-fault server stopped, and why. */
const SERVER_STOP_GRACE_MS = 1000;

function serverStoppedError(id: string, stop: PageFaultServerStop): OrchestratorError {
  const why = stop.error?.message ?? stop.reason;
  return stop.error?.code === "MEMORY_FETCH_FAILED"
    ? new OrchestratorError("MEMORY_FETCH_FAILED", `sandbox ${id} stopped before it ran: ${why}`, {
        cause: stop.error,
        details: { id },
      })
    : new OrchestratorError(
        "STEP_FAILED",
        `sandbox ${id}'s page-fault server stopped before the guest ran again: ${why}`,
        {
          ...(stop.error ? { cause: stop.error } : {}),
          details: { id },
        },
      );
}

/** A running sandbox. Kill it (or `await using`) and nothing it owned is left. */
export class Sandbox implements AsyncDisposable {
  readonly id: string;
  readonly template: string;
  readonly directory: string;
  readonly firecracker: FirecrackerProcess;
  readonly server: PageFaultServer;
  readonly timings: StepRunResult["timings"];
  readonly #context: SandboxContext;
  readonly #steps: StepRunResult;
  readonly #hooks: CreateSandboxHooks;
  #killed: Promise<void> | undefined;
  #pausing: Promise<unknown> = Promise.resolve();
  #agent: Promise<AgentClient> | undefined;

  constructor(context: SandboxContext, steps: StepRunResult, hooks: CreateSandboxHooks = {}) {
    this.#context = context;
    this.#steps = steps;
    this.#hooks = hooks;
    this.id = context.sandboxId;
    this.template = context.build.template;
    this.directory = requireFromStep(context.sandboxDir, "the sandbox directory");
    this.firecracker = requireFromStep(context.firecracker, "Firecracker");
    this.server = requireFromStep(context.server, "the page-fault server");
    this.timings = steps.timings;
    // Firecracker would hang on its next fault without its page-fault server, and a server whose peer
    // exited serves nobody: whatever stopped it (error, close, abort, a crashed worker, the VM's exit),
    // the sandbox goes with it. kill() is idempotent, so the server stopping inside kill() is harmless.
    void this.server.stopped.then((stop: PageFaultServerStop) => {
      if (this.#killed) return;
      this.#context.logger.warn?.(
        { id: this.id, reason: stop.reason, error: stop.error?.message },
        "the page-fault server stopped: killing the sandbox",
      );
      void this.kill().catch(() => undefined);
    });
  }

  /** The build whose memory and disk this sandbox runs on (after a `keepRunning` pause, that pause). */
  get build(): BuildManifest {
    return this.#context.build;
  }

  /** Firecracker's resident memory, what it gave back since its peak, and the balloon's REMOVE events. */
  async memoryStats(): Promise<SandboxMemoryStats> {
    return sandboxMemoryStats(await readProcessMemory(this.firecracker.pid), this.server.metrics(), {
      guestBytes: this.#context.build.memory.sizeBytes,
      balloon: this.#context.build.boot?.balloon?.freePageReporting === true,
    });
  }

  /** The network namespace the VM lives in (undefined for a build without a NIC). */
  get networkNamespace(): string | undefined {
    return this.#context.network?.name;
  }

  #network(what: string): SandboxNetwork {
    const network = this.#context.sandboxNetwork;
    if (!network)
      throw new OrchestratorError(
        "INVALID_OPTIONS",
        `${what}: sandbox ${this.id}'s build has no network interface`,
      );
    return network;
  }

  /**
   * Makes a guest port reachable from the host at the sandbox's own address (clones share a guest
   * address; each has its own namespace address), and with `publish` on a host port too. Removed
   * with the sandbox, or by `close()`.
   */
  expose(guestPort: number, options: { publish?: boolean | number } = {}): Promise<ExposedPort> {
    return this.#network("expose").expose(guestPort, options);
  }

  /** The guest ports exposed now. */
  ports(): ExposedPort[] {
    return this.#context.sandboxNetwork ? [...this.#context.sandboxNetwork.exposedPorts] : [];
  }

  /**
   * The in-guest agent, over the sandbox's vsock. The first call after a create or resume also sets
   * the guest's clock and reseeds its RNG (clones of one snapshot otherwise share both).
   */
  agent(): Promise<AgentClient> {
    this.#agent ??= (async () => {
      const client = new AgentClient(
        firecrackerVsockTransport({
          udsPath: join(this.directory, AGENT_VSOCK_SOCKET),
          port: AGENT_VSOCK_PORT,
        }),
        { logger: this.#context.logger },
      );
      try {
        await client.afterRestore();
      } catch (error) {
        await client.close();
        throw error;
      }
      return client;
    })();
    this.#agent.catch(() => {
      this.#agent = undefined;
    });
    return this.#agent;
  }

  /** `sandbox.commands.run("uname -a")`, `.start(...)`, `.list()`: processes in the guest. */
  get commands(): AgentClient["commands"] {
    return lazyFacade(() => this.agent().then((client) => client.commands));
  }

  /** `sandbox.files.read/write/list/stat/mkdir/remove/rename`: the guest's files. */
  get files(): AgentClient["files"] {
    return lazyFacade(() => this.agent().then((client) => client.files));
  }

  /** Replaces this sandbox's own policy layer (on the config's and template's), in one firewall transaction. */
  setEgressPolicy(policy: EgressPolicyInput): Promise<void> {
    const { config } = this.#context.state;
    return this.#network("setEgressPolicy").applyEgressPolicy(
      resolveEgressPolicy(
        config.egressPolicy,
        this.#context.build.egress as EgressPolicyInput | undefined,
        policy,
      ),
    );
  }

  get state(): OrchestratorState {
    return this.#context.state;
  }

  /**
   * Pauses the VM into a new immutable build (a Diff snapshot layered on the build it runs from, its disk
   * cloned beside it) and records it as this sandbox's paused state. Then stops the sandbox, or with
   * `keepRunning` resumes it, running on from the new build. Resume with `createSandbox({ from })`.
   */
  pause(options: PauseOptions = {}): Promise<PausedSandbox> {
    // One pause at a time: each layers on the build the one before made.
    const paused = this.#pausing.then(async () => {
      const result = await pauseSandbox(this.#context, this.firecracker, options);
      this.#hooks.onBuildPublished?.(result.build.id);
      if (options.keepRunning) {
        this.#context.build = result.build;
        this.#context.header = result.header;
      } else {
        await this.kill();
      }
      return result.paused;
    });
    this.#pausing = paused.catch(() => undefined);
    return paused;
  }

  /**
   * N new sandboxes that continue from this one's present state: a pause that keeps this one running,
   * then N creates from that build. Each fork has its own network namespace, disk and memory.
   */
  async fork(
    count: number,
    options: Omit<CreateSandboxOptions, "template" | "from" | "build"> = {},
  ): Promise<Sandbox[]> {
    if (!Number.isInteger(count) || count < 1)
      throw new OrchestratorError("INVALID_OPTIONS", `fork(${count}): count is a positive integer`);
    const paused = await this.pause({ keepRunning: true, record: false });
    const settled = await Promise.allSettled(
      Array.from({ length: count }, () =>
        createSandbox(this.#context.state, { ...options, build: paused.build }, this.#hooks),
      ),
    );
    const forks = settled.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
    const failed = settled.find((s) => s.status === "rejected");
    if (failed) {
      await Promise.allSettled(forks.map((f) => f.kill()));
      throw (failed as PromiseRejectedResult).reason;
    }
    return forks;
  }

  /** Firecracker (graceful, then forced), its page-fault server, network, disk and record. */
  kill(): Promise<void> {
    this.#killed ??= (async () => {
      const agent = this.#agent;
      this.#agent = undefined;
      if (agent) await agent.then((client) => client.close()).catch(() => undefined);
      await this.#steps.cleanup();
    })().finally(() => this.#hooks.onGone?.(this));
    return this.#killed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill();
  }
}

/** What an Orchestrator lends createSandbox: metrics, logger, store, admission, and lifecycle callbacks. */
export interface CreateSandboxHooks {
  metrics?: OrchestratorMetrics;
  logger?: Logger;
  /** Prepared networks to take from (an Orchestrator with `networkPoolSize` keeps one). */
  networkPool?: NetworkPool;
  /** Where builds that are not on this host come from (see store-sync.ts). */
  store?: BuildStore;
  /**
   * The store's memory through the host's chunk cache: with it, a build from the store restores lazily
   * (only the chunks the guest touches are fetched); without it, its memory comes down whole first.
   */
  remoteMemory?: RemoteMemory;
  /** Called with each build a pause publishes (an Orchestrator with a store uploads it). */
  onBuildPublished?: (build: string) => void;
  /** Called once the sandbox is running, and `onGone` once it is killed (an Orchestrator tracks both). */
  onCreated?: (sandbox: Sandbox) => void;
  onGone?: (sandbox: Sandbox) => void;
  /**
   * Waits until the host has room for a VM of `build` (an Orchestrator charges its capacity and takes
   * a start slot), before anything of the sandbox exists; `started` once the steps succeeded, `release`
   * when the create fails or the sandbox is gone. Time spent here never counts against the boot or
   * alive timeouts, which start later.
   */
  admit?: (
    build: BuildManifest,
    signal: AbortSignal | undefined,
  ) => Promise<{ started?(): void; release(): void }>;
}

async function resolveBuildId(state: OrchestratorState, options: CreateSandboxOptions): Promise<string> {
  const given = [options.template, options.from, options.build].filter((v) => v !== undefined);
  if (given.length !== 1)
    throw new OrchestratorError(
      "INVALID_OPTIONS",
      "createSandbox takes exactly one of template, from and build",
    );
  if (options.from) return options.from.build;
  if (options.build) return options.build;
  return (await readTemplatePointer(state.config, options.template as string)).build;
}

/**
 * Starts a sandbox from a template, a paused sandbox or a build, with or without an `Orchestrator`
 * (which adds limits and tracking): `await using sandbox = await createSandbox(state, { template })`.
 * A failure at any step undoes the ones before; a build whose memory is gone fails before anything
 * starts (BUILD_MISSING), never with a guest served wrong pages.
 */
export async function createSandbox(
  state: OrchestratorState,
  options: CreateSandboxOptions,
  hooks: CreateSandboxHooks = {},
): Promise<Sandbox> {
  const metrics = hooks.metrics ?? newMetrics();
  const buildId = await resolveBuildId(state, options);
  const release = state.leases.lease(buildId);
  try {
    // A build made on another host (and the builds its pages come from) is fetched first.
    await ensureLocalBuild(state, hooks.store, buildId, hooks.remoteMemory ? "lazy" : "file");
    const [build, header] = await Promise.all([
      readBuild(state.config, buildId),
      readBuildHeader(state.config, buildId),
    ]);
    if (options.from && options.from.template !== build.template)
      throw new OrchestratorError(
        "INVALID_OPTIONS",
        `paused sandbox ${options.from.id} is of template "${options.from.template}", but its build ${buildId} is of "${build.template}"`,
      );
    const context: SandboxContext = {
      state,
      sandboxId: newSandboxId(),
      template: build.template,
      buildId,
      build,
      header,
      ...(await memorySourcesOf(state, header, hooks.remoteMemory).then(({ paths, remote }) => ({
        memoryFiles: paths,
        ...(remote ? { remoteMemory: remote } : {}),
      }))),
      egressPolicy: resolveEgressPolicy(
        state.config.egressPolicy,
        build.egress as EgressPolicyInput | undefined,
        options.egress,
      ),
      ...(hooks.networkPool ? { networkPool: hooks.networkPool } : {}),
      options,
      metrics,
      logger: hooks.logger ?? silentLogger,
    };
    const defaults = defaultSandboxSteps();
    const steps = options.steps ? options.steps(defaults) : defaults;
    // No jailer and no opt-out fails here, before anything of the sandbox exists.
    if (steps.has("firecracker")) await launchModeFor(state);
    const admission = await hooks.admit?.(build, options.signal);
    let result: StepRunResult;
    try {
      const run = await runSteps(steps, context, {
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.onEvent ? { onEvent: options.onEvent } : {}),
      });
      // The charge goes back once everything the steps made is gone (kill, or a failure below).
      const cleanup = () => run.cleanup().finally(() => admission?.release());
      result = { timings: run.timings, cleanup, [Symbol.asyncDispose]: cleanup };
      admission?.started?.();
    } catch (error) {
      admission?.release();
      metrics.createFailures += 1;
      throw error;
    }
    if (!context.firecracker || !context.server || !context.sandboxDir) {
      await result.cleanup();
      throw new OrchestratorError("STEP_FAILED", "the create steps finished without a running VM");
    }
    metrics.sandboxesCreated += 1;
    const sandbox = new Sandbox(context, result, { ...hooks, metrics });
    hooks.onCreated?.(sandbox);
    return sandbox;
  } finally {
    // From here the sandbox's record (which names its build) pins it.
    release();
  }
}
