// Starts one Firecracker for the orchestrator (a template boot, a working-set recording, a sandbox), under
// the jailer or, opted out, unjailed; and says which path the VM sees for each of its files. Jailed, the
// VM gets a chroot of its own under the state directory with copies of its kernel and vmstate, a hard
// link of its own disk at the path the snapshot remembers, its API, vsock and page-fault sockets, a uid
// and gid of its own, the sandbox's network namespace, cgroup limits and a pid namespace. Unjailed, it
// runs as root with the disk bind-mounted in a private mount namespace, as before the jailer.
import { chown, link, mkdir, rename, rm, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { type Logger, silentLogger } from "@sbx/arch";
import {
  type CgroupLimits,
  cgroupLimitFiles,
  type FirecrackerProcess,
  type KillOptions,
  launchFirecracker,
} from "@sbx/fc-client";
import type { OrchestratorConfig } from "./config.ts";
import { OrchestratorError } from "./errors.ts";
import type { JailerSettings, LaunchMode } from "./jail-plan.ts";
import { diskSlotPath, ensureDiskSlot } from "./template-build.ts";
import { BUILD_FILES } from "./template-manifest.ts";
import { type UidPool, uidsInUse } from "./uid-pool.ts";
import { wrapInVmNamespaces } from "./vm-namespace.ts";

/** File names inside a chroot: what the VM is told. */
export const JAILED_FILES = Object.freeze({
  kernel: "vmlinux",
  vmstate: "vmstate",
  memory: "memory",
  uffdSocket: "uffd.sock",
  vsockSocket: "vsock.sock",
});

/** What launchVm needs to start one Firecracker, jailed or not. */
export interface VmLaunchRequest {
  mode: LaunchMode;
  config: OrchestratorConfig;
  /** The VM's id and its jail's name: 1-64 of A-Z a-z 0-9 -, unique among this state's live VMs. */
  id: string;
  firecrackerBinary: string;
  /** Unjailed: Firecracker's working directory (the snapshot's relative vsock path lands here). */
  workDir: string;
  /** Unjailed only: the API socket; default a fresh temp directory. Jailed, it is in the chroot. */
  apiSocketPath?: string;
  logPath?: string;
  metricsPath?: string;
  networkNamespace?: string;
  /** This VM's own disk: it appears at the state's disk-slot path, where every snapshot expects it. */
  disk?: string;
  /** For a boot: the kernel (copied into the chroot). */
  kernel?: string;
  /** For a restore: the snapshot's vmstate (copied into the chroot, owned by the VM). */
  vmstate?: string;
  /** Jailed: the uid/gid (a sandbox takes one from the pool and records it first); default one from `uids`. */
  owner?: { uid: number; gid: number };
  uids?: UidPool;
  limits?: CgroupLimits;
  uffdRestore?: boolean;
  signal?: AbortSignal;
  logger?: Logger;
}

/** A started Firecracker: its process, its jail and owner, the paths it is told, and how to snapshot and kill it. */
export interface LaunchedVm extends AsyncDisposable {
  readonly fc: FirecrackerProcess;
  readonly jailed: boolean;
  /** The uid/gid Firecracker runs as (undefined unjailed: root). */
  readonly owner: { uid: number; gid: number } | undefined;
  /** `<chroot base>/<exec>/<id>` (holds `root/`), removed when the VM goes; undefined unjailed. */
  readonly jailDirectory: string | undefined;
  /** The paths Firecracker is told. */
  readonly vmPaths: { kernel?: string; disk: string; vmstate?: string; uffdSocket: string };
  /** Where the page-fault server must listen (inside the chroot when jailed) and whose peer it serves. */
  readonly uffdSocket: { path: string; owner?: { uid: number; gid: number } };
  /** The vsock socket on the host, once the VM made it (after a boot or a snapshot load). */
  readonly vsockSocket: string;
  /**
   * Snapshots the (already paused) VM into `directory` as `vmstate` and `memory`, owned by root. Jailed,
   * Firecracker can write only inside its chroot: the files are renamed out (same file system), so they
   * outlive the jail.
   */
  snapshotInto(directory: string, snapshotType: "Full" | "Diff"): Promise<void>;
  /** Kills Firecracker, removes its jail, gives its disk back to root and its uid back to the pool. */
  kill(options?: KillOptions): Promise<void>;
}

/** Where the page-fault server listens unjailed (the jailed one is always `/uffd.sock` in the chroot). */
function unjailedUffdSocket(workDir: string): string {
  return join(workDir, JAILED_FILES.uffdSocket);
}

/** What every launch passes to `launchFirecracker`, jailed or not. */
function commonLaunchOptions(request: VmLaunchRequest, logger: Logger) {
  const { config } = request;
  return {
    id: request.id,
    arch: config.targetArch,
    ...(request.logPath ? { logPath: request.logPath } : {}),
    ...(request.metricsPath ? { metricsPath: request.metricsPath } : {}),
    ...(request.uffdRestore ? { uffdRestore: true } : {}),
    ...(config.seccompFilter ? { seccompFilter: config.seccompFilter } : {}),
    ...(config.allowNoSeccomp ? { allowNoSeccomp: true } : {}),
    ...(request.signal ? { signal: request.signal } : {}),
    logger,
  };
}

/**
 * Starts one Firecracker the way every step does: in its jail (chroot, uid, cgroup, pid namespace)
 * unless the operator opted out (then warned about, every time).
 */
export function launchVm(request: VmLaunchRequest): Promise<LaunchedVm> {
  const logger = request.logger ?? silentLogger;
  return request.mode.jailed
    ? launchJailed(request, request.mode.jailer, logger)
    : launchUnjailed(request, logger);
}

async function launchUnjailed(request: VmLaunchRequest, logger: Logger): Promise<LaunchedVm> {
  const { config } = request;
  const slot = diskSlotPath(config);
  logger.warn?.(
    { id: request.id },
    "Firecracker runs unjailed, as root (SBX_UNJAILED=1): no chroot, uid or cgroup limits stand between a guest escape and the host",
  );
  if (request.disk) await ensureDiskSlot(config);
  const fc = await launchFirecracker({
    ...wrapInVmNamespaces(request.firecrackerBinary, {
      ...(request.networkNamespace ? { networkNamespace: request.networkNamespace } : {}),
      binds: request.disk ? [{ source: request.disk, target: slot }] : [],
    }),
    ...commonLaunchOptions(request, logger),
    ...(request.apiSocketPath ? { socketPath: request.apiSocketPath } : {}),
    cwd: request.workDir,
  });
  const kill = async (options: KillOptions = { discard: true, graceMs: 1000 }) => {
    await fc.kill(options);
  };
  return {
    fc,
    jailed: false,
    owner: undefined,
    jailDirectory: undefined,
    vmPaths: {
      ...(request.kernel ? { kernel: request.kernel } : {}),
      disk: slot,
      ...(request.vmstate ? { vmstate: request.vmstate } : {}),
      uffdSocket: unjailedUffdSocket(request.workDir),
    },
    uffdSocket: { path: unjailedUffdSocket(request.workDir) },
    vsockSocket: join(request.workDir, JAILED_FILES.vsockSocket),
    async snapshotInto(directory, snapshotType) {
      await fc.client.createSnapshot({
        snapshot_type: snapshotType,
        snapshot_path: join(directory, BUILD_FILES.vmstate),
        mem_file_path: join(directory, BUILD_FILES.memory),
      });
    },
    kill,
    [Symbol.asyncDispose]: () => kill(),
  };
}

async function launchJailed(
  request: VmLaunchRequest,
  jailer: JailerSettings,
  logger: Logger,
): Promise<LaunchedVm> {
  const slot = diskSlotPath(request.config);
  let owner = request.owner;
  let releaseUid = () => {};
  if (!owner) {
    if (!request.uids)
      throw new OrchestratorError("INVALID_OPTIONS", "a jailed launch needs an owner or a uid pool");
    const uid = request.uids.allocate(await uidsInUse());
    const pool = request.uids;
    owner = { uid, gid: uid };
    releaseUid = () => pool.release(uid);
  }
  const files: Record<string, string> = {};
  if (request.kernel) files[JAILED_FILES.kernel] = request.kernel;
  if (request.vmstate) files[JAILED_FILES.vmstate] = request.vmstate;
  let fc: FirecrackerProcess;
  try {
    fc = await launchFirecracker({
      binary: request.firecrackerBinary,
      ...commonLaunchOptions(request, logger),
      jail: {
        jailerBinary: jailer.jailerBinary,
        uid: owner.uid,
        gid: owner.gid,
        chrootBaseDir: jailer.chrootBaseDir,
        cgroupVersion: jailer.cgroupVersion,
        cgroups: cgroupLimitFiles(request.limits ?? {}, jailer.cgroupVersion),
        parentCgroup: jailer.parentCgroup,
        ...(request.networkNamespace ? { netns: `/run/netns/${request.networkNamespace}` } : {}),
        files,
        // Private copies: a build's files are shared and stay root's; the VM's uid owns only its own.
        copiedFiles: Object.keys(files),
        ownedFiles: Object.keys(files),
      },
    });
  } catch (error) {
    releaseUid();
    throw error;
  }
  const vmOwner = owner;
  const giveDiskBack = async () => {
    if (request.disk) await chown(request.disk, 0, 0).catch(() => undefined);
  };
  let killed: Promise<void> | undefined;
  const kill = (options: KillOptions = { discard: true, graceMs: 1000 }): Promise<void> => {
    killed ??= (async () => {
      try {
        await fc.kill(options);
      } finally {
        await giveDiskBack();
        releaseUid();
      }
    })();
    return killed;
  };
  // A VM that ends on its own (a provisioning boot powers off) gives its uid back as well.
  void fc.exited.then(() => kill());
  const jail = fc.jail;
  if (!jail) {
    // launchFirecracker returns a jail for every launch with jail options; its type cannot say so.
    await kill();
    throw new OrchestratorError(
      "STEP_FAILED",
      `Firecracker ${fc.id} was launched jailed but reports no jail`,
      { details: { id: fc.id } },
    );
  }
  const diskInJail = jail.hostPath(slot);
  try {
    if (request.disk) {
      // The snapshot (and the boot config) name the disk by the state's slot path: the same path inside
      // the chroot, a hard link to this VM's own disk, so no bind mount or mount namespace is needed.
      await mkdir(dirname(diskInJail), { recursive: true, mode: 0o755 });
      try {
        await link(request.disk, diskInJail);
      } catch (cause) {
        throw new OrchestratorError(
          "INVALID_OPTIONS",
          `cannot link the disk ${request.disk} into the jail at ${diskInJail}: ${(cause as Error).message} (the jail base must be on the state directory's file system)`,
          { cause, details: { disk: request.disk, target: diskInJail } },
        );
      }
      await chown(diskInJail, vmOwner.uid, vmOwner.gid);
    }
  } catch (error) {
    await kill();
    throw error;
  }
  return {
    fc,
    jailed: true,
    owner: vmOwner,
    jailDirectory: dirname(jail.chrootDir),
    vmPaths: {
      ...(request.kernel ? { kernel: `/${JAILED_FILES.kernel}` } : {}),
      disk: slot,
      ...(request.vmstate ? { vmstate: `/${JAILED_FILES.vmstate}` } : {}),
      uffdSocket: `/${JAILED_FILES.uffdSocket}`,
    },
    uffdSocket: { path: jail.hostPath(`/${JAILED_FILES.uffdSocket}`), owner: vmOwner },
    vsockSocket: jail.hostPath(`/${JAILED_FILES.vsockSocket}`),
    async snapshotInto(directory, snapshotType) {
      const names = [JAILED_FILES.vmstate, JAILED_FILES.memory] as const;
      // A vmstate the restore copied in, or an earlier pause's leftovers: Firecracker writes anew.
      for (const name of names) await rm(jail.hostPath(`/${name}`), { force: true });
      await fc.client.createSnapshot({
        snapshot_type: snapshotType,
        snapshot_path: `/${JAILED_FILES.vmstate}`,
        mem_file_path: `/${JAILED_FILES.memory}`,
      });
      for (const [name, target] of [
        [JAILED_FILES.vmstate, BUILD_FILES.vmstate],
        [JAILED_FILES.memory, BUILD_FILES.memory],
      ] as const) {
        const from = jail.hostPath(`/${name}`);
        const to = join(directory, target);
        await rename(from, to);
        // The build is root's: no later VM's uid (this one's, reused) may change it.
        await chown(to, 0, 0);
      }
    },
    kill,
    [Symbol.asyncDispose]: () => kill(),
  };
}

/** Whether `path` exists (a socket a VM made, a file it wrote). */
export async function exists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined)) !== undefined;
}
