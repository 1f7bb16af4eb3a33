// Records a build's working set: restores its staged snapshot once, serves the guest's faults from the
// staged memory, and keeps the order in which pages were first touched until the guest is alive again.
// Every later create prefetches those pages (see the `page-fault-server` step), so the guest finds
// them present instead of faulting them in one at a time. It runs before `publish`: a published build
// is immutable, and its working set is one of its files.
import { mkdir, mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Logger, silentLogger, writeFileAtomic } from "@sbx/arch";
import {
  decodeWorkingSet,
  encodeWorkingSet,
  fullMemoryHeader,
  MAX_WORKING_SET_BYTES,
  PageFaultServer,
  type WorkingSet,
  workingSetFromTrace,
  workingSetPages,
} from "@sbx/uffd";
import type { OrchestratorConfig } from "./config.ts";
import { cloneFile } from "./disk-clone.ts";
import { OrchestratorError } from "./errors.ts";
import { defaultVmLimits, type LaunchMode, launchModeFor } from "./jail-plan.ts";
import { BUILD_FILES } from "./template-manifest.ts";
import type { UidPool } from "./uid-pool.ts";
import { launchVm } from "./vm-launch.ts";
import { waitForConsoleLogged } from "./wait-for-line.ts";

/**
 * Without an alive line, recording ends once the guest faulted no new page for this long: its resume
 * burst is over (sbx's own guests print nothing after a restore).
 */
export const RECORD_QUIET_MS = 250;
/** The scratch directory of a recording inside the staging directory; never published. */
const RECORD_DIR = ".record-working-set";

export interface RecordWorkingSetOptions {
  /** A staged build's directory: its vmstate and Full memory (and its rootfs, when it has one). */
  stagingDir: string;
  buildId: string;
  /** The Firecracker binary that restores it (the one that wrote the snapshot). */
  firecrackerBinary: string;
  /** The state directory (its disk slot, its jails) and how VMs are started. */
  config: OrchestratorConfig;
  /** Jailed (the VM gets a uid from `uids`) or unjailed; default what the config says (launchModeFor). */
  launchMode?: LaunchMode;
  uids?: UidPool;
  /** The network namespace with the TAP the snapshot reopens, when its VM had a NIC. */
  networkNamespace?: string;
  /**
   * The console line that says the guest is ready: recording stops there. `quiet` (the default):
   * recording stops once no page was faulted for RECORD_QUIET_MS, or at `timeoutMs` with what the
   * guest touched until then.
   */
  until?: RegExp | "quiet";
  timeoutMs: number;
  logIntervalMs?: number;
  signal?: AbortSignal;
  logger?: Logger;
}

export interface RecordedWorkingSet {
  workingSet: WorkingSet;
  /** Where it was written: `<stagingDir>/working-set`. */
  path: string;
  pages: number;
  faults: number;
  elapsedMs: number;
}

/**
 * Restores the staged snapshot once over userfaultfd, waits for the alive line (or for the faults to
 * go quiet), and writes the pages the guest touched until then, in first-touch order, to `<stagingDir>/working-set` (temp name, fsync,
 * rename). The VM runs on a clone of the staged rootfs, so the build's own disk is never written.
 */
export async function recordWorkingSet(options: RecordWorkingSetOptions): Promise<RecordedWorkingSet> {
  const logger = options.logger ?? silentLogger;
  const started = performance.now();
  const staged = (name: string) => join(options.stagingDir, name);
  // The disk clone stays beside the staged rootfs (a reflink where the filesystem can); the sockets go
  // to a short temp directory, since a Unix socket path holds at most 107 bytes.
  const diskDir = staged(RECORD_DIR);
  await rm(diskDir, { recursive: true, force: true });
  await mkdir(diskDir, { recursive: true, mode: 0o700 });
  const work = await mkdtemp(join(tmpdir(), "sbx-ws-"));
  try {
    const memoryPath = staged(BUILD_FILES.memory);
    const memorySize = (await stat(memoryPath)).size;
    const hasRootfs = await stat(staged(BUILD_FILES.rootfs)).then(
      () => true,
      () => false,
    );
    let disk: string | undefined;
    if (hasRootfs) {
      disk = join(diskDir, BUILD_FILES.rootfs);
      await cloneFile(staged(BUILD_FILES.rootfs), disk);
    }
    // The VM first: jailed, the page-fault server listens inside its chroot and serves only its pid.
    await using vm = await launchVm({
      mode: options.launchMode ?? (await launchModeFor({ config: options.config })),
      config: options.config,
      id: `record-${options.buildId.slice(-12).toLowerCase()}`,
      firecrackerBinary: options.firecrackerBinary,
      // Unjailed, the snapshot's relative vsock socket lands here and goes with the directory.
      workDir: work,
      logPath: join(work, "firecracker.log"),
      ...(options.networkNamespace ? { networkNamespace: options.networkNamespace } : {}),
      ...(disk ? { disk } : {}),
      vmstate: staged(BUILD_FILES.vmstate),
      ...(options.uids ? { uids: options.uids } : {}),
      limits: defaultVmLimits({ memoryBytes: memorySize }),
      uffdRestore: true,
      ...(options.signal ? { signal: options.signal } : {}),
      logger,
    });
    const fc = vm.fc;
    const snapshotPath = vm.vmPaths.vmstate;
    if (snapshotPath === undefined) {
      throw new OrchestratorError(
        "STEP_FAILED",
        `the recording VM ${fc.id} was launched without the build's vmstate, so there is no snapshot to load`,
        { details: { buildId: options.buildId } },
      );
    }
    await using server = new PageFaultServer({
      socketPath: vm.uffdSocket.path,
      ...(vm.uffdSocket.owner
        ? { owner: vm.uffdSocket.owner, expectedPeerUid: vm.uffdSocket.owner.uid }
        : {}),
      expectedPeerPid: fc.pid,
      memory: {
        header: fullMemoryHeader({ build: options.buildId, memorySize }),
        paths: { [options.buildId]: memoryPath },
      },
      logger,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    await server.listen();
    const since = fc.console.position;
    await fc.client.loadSnapshot({
      snapshot_path: snapshotPath,
      mem_backend: { backend_type: "Uffd", backend_path: vm.vmPaths.uffdSocket },
      resume_vm: true,
    });
    const until = options.until ?? "quiet";
    if (until === "quiet") await faultsQuiet(server, options.timeoutMs, options.signal);
    else
      await waitForConsoleLogged(fc, until, {
        what: `build ${options.buildId}'s guest to run again (recording its working set)`,
        timeoutMs: options.timeoutMs,
        since,
        logIntervalMs: options.logIntervalMs ?? 10_000,
        logger,
      });
    // Read at once: what the guest touches later is its steady state, not its resume.
    const trace = server.faultTrace();
    const workingSet = workingSetFromTrace(trace, memorySize);
    const path = staged(BUILD_FILES.workingSet);
    await writeFileAtomic(path, encodeWorkingSet(workingSet));
    const recorded = {
      workingSet,
      path,
      pages: workingSetPages(workingSet),
      faults: trace.length,
      elapsedMs: performance.now() - started,
    };
    logger.info?.(
      { build: options.buildId, pages: recorded.pages, ranges: workingSet.ranges.length },
      "working set recorded",
    );
    return recorded;
  } finally {
    await rm(work, { recursive: true, force: true });
    await rm(diskDir, { recursive: true, force: true });
  }
}

/** Resolves once no fault was served for RECORD_QUIET_MS after the first one, or at `timeoutMs`. */
async function faultsQuiet(server: PageFaultServer, timeoutMs: number, signal?: AbortSignal) {
  const deadline = performance.now() + timeoutMs;
  let faults = 0;
  let changed = performance.now();
  while (performance.now() < deadline) {
    if (signal?.aborted) throw new OrchestratorError("ABORTED", "recording the working set was aborted");
    const now = server.metrics().faults;
    if (now !== faults) {
      faults = now;
      changed = performance.now();
    } else if (faults > 0 && performance.now() - changed >= RECORD_QUIET_MS) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * A build's working set as the page-fault server takes it, or undefined when the build has none or its
 * file is unreadable or invalid (logged): a working set only ever saves time, so it never fails a create.
 */
export async function readWorkingSet(
  path: string,
  memorySize: number,
  logger: Logger = silentLogger,
): Promise<WorkingSet | undefined> {
  try {
    const info = await stat(path);
    if (info.size > MAX_WORKING_SET_BYTES)
      throw new OrchestratorError("BUILD_INVALID", `${path} is ${info.size} bytes, more than a working set`);
    const set = decodeWorkingSet(await readFile(path));
    if (set.memorySize !== memorySize)
      throw new OrchestratorError(
        "BUILD_INVALID",
        `${path} was recorded for ${set.memorySize} bytes of memory, the build has ${memorySize}`,
      );
    return set;
  } catch (error) {
    logger.warn?.({ path, error: (error as Error).message }, "working set not used: restoring on demand");
    return undefined;
  }
}
