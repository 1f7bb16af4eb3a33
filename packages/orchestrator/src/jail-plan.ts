// How this orchestrator starts Firecracker: under the jailer (the default) or, only when the operator
// said so (SBX_UNJAILED=1), unjailed as root. Resolved once per state before any VM starts, so a host
// without a jailer fails with one typed error naming both ways out instead of half-way into a create.
import { createHash } from "node:crypto";
import { mkdir, readdir, rmdir, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { ArchError, type Logger, silentLogger } from "@sbx/arch";
import {
  type CgroupLimits,
  chooseCgroupVersion,
  jailCgroupDirs,
  type RemovedJails,
  readCgroupMounts,
  removeStaleJails,
} from "@sbx/fc-client";
import { archCheckedBinary, resolveDigestedArtifact } from "./boot-parameters.ts";
import type { OrchestratorConfig } from "./config.ts";
import { OrchestratorError } from "./errors.ts";

export interface JailerSettings {
  jailerBinary: string;
  jailerSha256: string;
  /** On the state directory's file system: disks and snapshots move in and out by link and rename. */
  chrootBaseDir: string;
  /** `<jailParentCgroup>/<state key>`: each VM's cgroup is `<this>/<vm id>` in every hierarchy used. */
  parentCgroup: string;
  cgroupVersion: 1 | 2;
}

/** How VMs start: under the jailer (with its settings), or unjailed by explicit opt-out. */
export type LaunchMode = { jailed: false } | { jailed: true; jailer: JailerSettings };

/** The cgroup controllers a VM's limits use (CPU, memory, pids). */
export const JAIL_CGROUP_CONTROLLERS = ["cpu", "memory", "pids"] as const;

/** Sandbox ids (12), template VMs (`template-` + 8) and recordings (`record-` + 12): the longest is 19. */
const LONGEST_VM_ID = 19;
const MAX_SOCKET_PATH_BYTES = 107;

/** Guest memory plus this, as the memory limit: Firecracker's own heap, page tables, snapshot I/O. */
export const JAIL_MEMORY_OVERHEAD_BYTES = 128 * 1024 * 1024;
/** Firecracker's threads (VMM, API, one per vCPU) with room to spare; a guest cannot fork host tasks. */
export const JAIL_DEFAULT_PIDS = 64;

/** The 12 hex digits that name a state directory's group of jail cgroups (a hash of its path). */
export function stateKey(stateDir: string): string {
  return createHash("sha256").update(resolve(stateDir)).digest("hex").slice(0, 12);
}

/** Where the jails of this state directory live, and the cgroup they are made under: no I/O. */
export function jailLayout(
  config: Pick<OrchestratorConfig, "stateDir" | "jailChrootBaseDir" | "jailParentCgroup">,
): {
  chrootBaseDir: string;
  parentCgroup: string;
} {
  const key = stateKey(config.stateDir);
  return {
    chrootBaseDir: config.jailChrootBaseDir ?? join(config.stateDir, "jail"),
    parentCgroup: `${config.jailParentCgroup}/${key}`,
  };
}

/**
 * The jailer: JAILER_BIN (arch-checked) or `{firecrackerRoot}/{version}/{arch}/jailer` (what `sbx setup`
 * installs; arch- and sidecar-checksum-checked like Firecracker). Undefined when neither exists.
 */
export async function resolveJailerBinary(
  config: Pick<OrchestratorConfig, "jailerBin" | "firecrackerRoot" | "firecrackerVersion" | "targetArch">,
): Promise<{ path: string; sha256: string } | undefined> {
  if (config.jailerBin) {
    const info = await stat(config.jailerBin).catch(() => undefined);
    if (!info?.isFile())
      throw new OrchestratorError("ARTIFACT_INVALID", `JAILER_BIN ${config.jailerBin} is not a file`, {
        details: { path: config.jailerBin },
      });
    return archCheckedBinary("JAILER_BIN", config.jailerBin, config.targetArch);
  }
  try {
    return await resolveDigestedArtifact({
      root: config.firecrackerRoot,
      version: config.firecrackerVersion,
      name: "jailer",
      arch: config.targetArch,
      verifyArch: true,
      checksum: { kind: "sidecar", allowUnverified: true },
    });
  } catch (error) {
    if (error instanceof ArchError && error.code === "ARTIFACT_NOT_FOUND") return undefined;
    if (error instanceof ArchError)
      throw new OrchestratorError("ARTIFACT_INVALID", `the jailer: ${error.message}`, { cause: error });
    throw error;
  }
}

/** The limits a VM gets unless the create says otherwise: its vCPUs, its memory plus overhead, pids. */
export function defaultVmLimits(machine: {
  vcpuCount?: number | undefined;
  memoryBytes: number;
}): CgroupLimits {
  return {
    ...(machine.vcpuCount ? { cpus: machine.vcpuCount } : {}),
    memoryBytes: machine.memoryBytes + JAIL_MEMORY_OVERHEAD_BYTES,
    pids: JAIL_DEFAULT_PIDS,
  };
}

async function resolveLaunchMode(config: OrchestratorConfig): Promise<LaunchMode> {
  if (config.unjailed) return { jailed: false };
  const jailer = await resolveJailerBinary(config);
  if (!jailer) {
    throw new OrchestratorError(
      "NOT_AVAILABLE",
      `no jailer: set JAILER_BIN to a Firecracker jailer (or install one at ${join(config.firecrackerRoot, config.firecrackerVersion, config.targetArch, "jailer")} with sbx setup), or run VMs unjailed as root with SBX_UNJAILED=1 (config unjailed: true)`,
      { details: { variables: ["JAILER_BIN", "SBX_UNJAILED"] } },
    );
  }
  if (process.getuid?.() !== 0) {
    throw new OrchestratorError(
      "NOT_AVAILABLE",
      `the jailer (${jailer.path}) needs root to chroot, change uid and make cgroups; run as root, or unjailed with SBX_UNJAILED=1`,
      { details: { variables: ["JAILER_BIN", "SBX_UNJAILED"] } },
    );
  }
  const layout = jailLayout(config);
  await mkdir(layout.chrootBaseDir, { recursive: true, mode: 0o700 });
  const [base, state] = await Promise.all([stat(layout.chrootBaseDir), stat(config.stateDir)]);
  if (base.dev !== state.dev) {
    throw new OrchestratorError(
      "CONFIG_INVALID",
      `the jail base ${layout.chrootBaseDir} is on another file system than the state directory ${config.stateDir}: disks are hard-linked into each chroot and snapshots renamed out of it; put SBX_JAIL_CHROOT_BASE_DIR on the state directory's file system`,
      { details: { chrootBaseDir: layout.chrootBaseDir, stateDir: config.stateDir } },
    );
  }
  // The longest path a VM's jail holds: the API socket of a VM with the longest id this package makes.
  const apiSocket = join(
    layout.chrootBaseDir,
    "firecracker",
    "x".repeat(LONGEST_VM_ID),
    "root/run/firecracker.socket",
  );
  if (Buffer.byteLength(apiSocket) > MAX_SOCKET_PATH_BYTES) {
    throw new OrchestratorError(
      "CONFIG_INVALID",
      `the jail base ${layout.chrootBaseDir} is too long: a VM's API socket would be ${Buffer.byteLength(apiSocket)} bytes, Unix sockets hold ${MAX_SOCKET_PATH_BYTES}; set SBX_JAIL_CHROOT_BASE_DIR (or SBX_STATE_DIR) to a shorter path on the same file system`,
      { details: { chrootBaseDir: layout.chrootBaseDir, variables: ["SBX_JAIL_CHROOT_BASE_DIR"] } },
    );
  }
  const mounts = await readCgroupMounts();
  const limitFiles = JAIL_CGROUP_CONTROLLERS.map((c) => `${c}.max`);
  const cgroupVersion = config.jailCgroupVersion ?? chooseCgroupVersion(mounts, limitFiles);
  try {
    jailCgroupDirs(mounts, cgroupVersion, limitFiles, layout.parentCgroup, "probe");
  } catch (error) {
    // A version that cannot hold the limits here (v2 on a hybrid host) is a setting to fix, not a create failure.
    throw new OrchestratorError(
      "CONFIG_INVALID",
      `SBX_JAIL_CGROUP_VERSION=${cgroupVersion}: ${(error as Error).message}`,
      { cause: error, details: { variables: ["SBX_JAIL_CGROUP_VERSION"] } },
    );
  }
  return {
    jailed: true,
    jailer: {
      jailerBinary: jailer.path,
      jailerSha256: jailer.sha256,
      chrootBaseDir: layout.chrootBaseDir,
      parentCgroup: layout.parentCgroup,
      cgroupVersion,
    },
  };
}

const modeOnce = new WeakMap<object, Promise<LaunchMode>>();

/** Resolved once per orchestrator state (a failure is retried next time), before any VM starts. */
export function launchModeFor(state: { config: OrchestratorConfig }): Promise<LaunchMode> {
  let mode = modeOnce.get(state);
  if (!mode) {
    mode = resolveLaunchMode(state.config);
    mode.catch(() => modeOnce.delete(state));
    modeOnce.set(state, mode);
  }
  return mode;
}

/**
 * Removes the chroots and cgroups of this state directory's jailed VMs that no longer run: after a
 * crash of the owning process its VMs died with it (pid namespace, death signal), but nobody removed
 * their jails. Run after reclaim, under the state directory's lock. With `ids`, only those VMs.
 */
export async function sweepStaleJails(
  config: Pick<OrchestratorConfig, "stateDir" | "jailChrootBaseDir" | "jailParentCgroup">,
  logger: Logger = silentLogger,
  ids?: readonly string[],
): Promise<RemovedJails> {
  const layout = jailLayout(config);
  const total: RemovedJails = { removed: [], running: [], leftCgroups: [] };
  // The chroot level below the base is Firecracker's file name; cgroups are swept with the first.
  const execNames = (await readdir(layout.chrootBaseDir).catch(() => [] as string[])).filter((n) =>
    /^[A-Za-z0-9._-]+$/.test(n),
  );
  for (const execName of execNames.length > 0 ? execNames : ["firecracker"]) {
    try {
      const result = await removeStaleJails({
        firecrackerBinary: `/${execName}`,
        chrootBaseDir: layout.chrootBaseDir,
        parentCgroup: layout.parentCgroup,
        ...(ids ? { ids } : {}),
      });
      total.removed.push(...result.removed);
      total.running.push(...result.running);
      total.leftCgroups.push(...result.leftCgroups);
    } catch (error) {
      logger.warn?.({ execName, error: (error as Error).message }, "sweeping stale jails failed");
    }
  }
  return total;
}

/**
 * Removes this state directory's parent cgroup (`{parent}/{state key}`) from every hierarchy once no VM
 * cgroup is left in it: the jailer makes it and never removes it, and each state directory has its own.
 * One still in use stays (rmdir refuses it). Returns those left.
 */
export async function removeJailParentCgroups(
  config: Pick<OrchestratorConfig, "stateDir" | "jailChrootBaseDir" | "jailParentCgroup">,
): Promise<string[]> {
  const { parentCgroup } = jailLayout(config);
  const mounts = await readCgroupMounts().catch(() => []);
  const left: string[] = [];
  for (const mount of mounts) {
    const dir = join(mount.path, parentCgroup);
    await rmdir(dir).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== "ENOENT") left.push(dir);
    });
  }
  return left;
}
