// A jailed VM whose owner was SIGKILLed dies with it (pid namespace, death signal), but nobody is left
// to remove its chroot and cgroups. The next owner sweeps them before it starts VMs of its own.
import { readdir, readFile, rm } from "node:fs/promises";
import { basename, join } from "node:path";
import { readCgroupMounts, removeCgroupDirs } from "./cgroups.ts";

/** Where `removeStaleJails` looks for jails an owner left behind (chroot base, cgroups). */
export interface RemoveStaleJailsOptions {
  /** The Firecracker binary the jails were made for (its file name names the chroot level). */
  firecrackerBinary: string;
  /** Default `/srv/jailer`. */
  chrootBaseDir?: string;
  /** Default `sbx`, as for launches. */
  parentCgroup?: string;
  /** Only VM ids starting with this (an owner's own prefix, when several owners share the base). */
  idPrefix?: string;
  /**
   * Only these VM ids, instead of every id found in the chroot base and under `parentCgroup`: for a
   * base that may hold jails that are not this owner's.
   */
  ids?: Iterable<string>;
}

/** What `removeStaleJails` removed, and what it left because a process still runs there. */
export interface RemovedJails {
  /** VM ids whose chroot or cgroups were removed. */
  removed: string[];
  /** VM ids left alone because a process still runs in their chroot or cgroup. */
  running: string[];
  /** Cgroup directories that could not be removed. */
  leftCgroups: string[];
}

async function list(dir: string): Promise<string[]> {
  return readdir(dir).catch(() => []);
}

/**
 * VM ids of live jailed Firecrackers (`/<exec name> --id <id>`). The jailer pivots into the chroot in
 * its own mount namespace, so `/proc/<pid>/root` says "/" and cannot tell which chroot a process uses.
 */
async function runningIds(execName: string): Promise<Set<string>> {
  const ids = new Set<string>();
  for (const entry of await list("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const args = (await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => "")).split("\0");
    const at = args.indexOf("--id");
    const id = at > 0 ? args[at + 1] : undefined;
    if (args[0] === `/${execName}` && id !== undefined) ids.add(id);
  }
  return ids;
}

/** A dead VM stays in its cgroup as a zombie until its reaper (the host's init) collects it. */
async function hasLiveTasks(cgroupDir: string): Promise<boolean> {
  const procs = await readFile(join(cgroupDir, "cgroup.procs"), "utf8").catch(() => "");
  for (const pid of procs.split("\n").filter(Boolean)) {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => undefined);
    if (stat !== undefined && !stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")) return true;
  }
  return false;
}

/** The VM ids that have a cgroup directly under `parentCgroup` in any hierarchy. */
export async function cgroupVmIds(parentCgroup: string): Promise<string[]> {
  const ids = new Set<string>();
  for (const mount of await readCgroupMounts()) {
    const children = await readdir(join(mount.path, parentCgroup), { withFileTypes: true }).catch(() => []);
    for (const child of children) {
      if (child.isDirectory() && /^[A-Za-z0-9-]{1,64}$/.test(child.name)) ids.add(child.name);
    }
  }
  return [...ids].sort();
}

/**
 * Removes the chroots and per-VM cgroups of jailed VMs that no longer run. Call it when an owner starts,
 * before it launches: a jail being set up by another owner concurrently in the same base and prefix
 * looks stale too.
 */
export async function removeStaleJails(options: RemoveStaleJailsOptions): Promise<RemovedJails> {
  const base = join(options.chrootBaseDir ?? "/srv/jailer", basename(options.firecrackerBinary));
  const parent = options.parentCgroup ?? "sbx";
  const prefix = options.idPrefix ?? "";
  const cgroupParents = (await readCgroupMounts()).map((m) => join(m.path, parent));
  let ids: Set<string>;
  if (options.ids) ids = new Set([...options.ids].filter((id) => id.startsWith(prefix)));
  else {
    ids = new Set((await list(base)).filter((id) => id.startsWith(prefix)));
    for (const id of await cgroupVmIds(parent)) if (id.startsWith(prefix)) ids.add(id);
  }
  const live = await runningIds(basename(options.firecrackerBinary));
  const result: RemovedJails = { removed: [], running: [], leftCgroups: [] };
  for (const id of [...ids].sort()) {
    const cgroupDirs = cgroupParents.map((dir) => join(dir, id));
    const busy = (await Promise.all(cgroupDirs.map(hasLiveTasks))).some(Boolean);
    if (busy || live.has(id)) {
      result.running.push(id);
      continue;
    }
    await rm(join(base, id), { recursive: true, force: true });
    result.leftCgroups.push(...(await removeCgroupDirs(cgroupDirs)));
    result.removed.push(id);
  }
  return result;
}
