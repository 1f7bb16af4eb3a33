// The jailer creates one cgroup per VM and never removes it; the launcher needs to know where those
// directories are (to remove them at disposal) and whether the limits asked for can be applied at all
// (on a hybrid host the v2 hierarchy has none of the v1-bound controllers, and the jailer would panic).
import { readFile, rmdir } from "node:fs/promises";
import { join } from "node:path";
import { FirecrackerLaunchError } from "./errors.ts";

/** A mounted cgroup hierarchy (v1 or v2) and the controllers it offers. */
export interface CgroupMount {
  version: 1 | 2;
  path: string;
  /** v1: the controllers bound to this hierarchy; v2: those listed in its root `cgroup.controllers`. */
  controllers: string[];
}

const MOUNTINFO_FILE = "/proc/self/mountinfo";

/** Mount points decode spaces and other bytes as octal escapes (`\040`). */
function unescapeMountPath(path: string): string {
  return path.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/**
 * The cgroup hierarchies mounted on this host (from mountinfo, whose super-block options of a v1
 * mount are exactly its controllers, without the per-mount flags).
 */
export async function readCgroupMounts(mountinfoText?: string): Promise<CgroupMount[]> {
  const text = mountinfoText ?? (await readFile(MOUNTINFO_FILE, "utf8"));
  const mounts: CgroupMount[] = [];
  for (const line of text.split("\n")) {
    const fields = line.split(" ");
    const separator = fields.indexOf("-");
    const mountPoint = fields[4];
    const type = fields[separator + 1];
    const superOptions = fields[separator + 3];
    if (separator < 0 || mountPoint === undefined || superOptions === undefined) continue;
    const path = unescapeMountPath(mountPoint);
    if (type === "cgroup") {
      const controllers = superOptions
        .split(",")
        .filter((o) => !o.includes("=") && !["rw", "ro"].includes(o));
      mounts.push({ version: 1, path, controllers });
    } else if (type === "cgroup2") {
      const listed =
        mountinfoText === undefined
          ? await readFile(join(path, "cgroup.controllers"), "utf8").catch(() => "")
          : "";
      mounts.push({ version: 2, path, controllers: listed.trim().split(/\s+/).filter(Boolean) });
    }
  }
  return mounts;
}

/** The controller a cgroup file belongs to (`memory.max` → `memory`). */
export function controllerOf(file: string): string {
  return file.slice(0, file.indexOf("."));
}

/**
 * The version to use when the caller did not choose: v2 when a cgroup2 hierarchy offers every controller
 * the limits need (a pure v2 host), else v1 (this also covers hybrid hosts, whose v2 tree is empty).
 */
export function chooseCgroupVersion(mounts: readonly CgroupMount[], files: readonly string[]): 1 | 2 {
  const needed = [...new Set(files.map(controllerOf))];
  const v2 = mounts.find((m) => m.version === 2);
  if (v2 && needed.every((c) => v2.controllers.includes(c))) return 2;
  if (mounts.some((m) => m.version === 1)) return 1;
  return 2;
}

/**
 * The per-VM cgroup directories the jailer will create for `files` under `parent/id`, one per v1
 * hierarchy touched, or the one v2 directory. Throws CGROUP_UNAVAILABLE when a controller is not
 * available in that version here, naming what is mounted instead.
 */
export function jailCgroupDirs(
  mounts: readonly CgroupMount[],
  version: 1 | 2,
  files: readonly string[],
  parent: string,
  id: string,
): string[] {
  const needed = [...new Set(files.map(controllerOf))];
  if (version === 2) {
    const v2 = mounts.find((m) => m.version === 2);
    const missing = needed.filter((c) => !v2?.controllers.includes(c));
    if (!v2 || missing.length > 0) {
      throw new FirecrackerLaunchError(
        "CGROUP_UNAVAILABLE",
        v2
          ? `cgroup v2 at ${v2.path} does not offer ${missing.join(", ")} (it offers: ${v2.controllers.join(", ") || "none"}; on a hybrid host these controllers are bound to v1 hierarchies): use cgroupVersion 1`
          : "no cgroup2 file system is mounted: use cgroupVersion 1",
        { details: { missing, mounts } },
      );
    }
    return needed.length === 0 ? [] : [join(v2.path, parent, id)];
  }
  const dirs = new Set<string>();
  for (const controller of needed) {
    const mount = mounts.find((m) => m.version === 1 && m.controllers.includes(controller));
    if (!mount) {
      throw new FirecrackerLaunchError(
        "CGROUP_UNAVAILABLE",
        `no cgroup v1 hierarchy has the ${controller} controller: use cgroupVersion 2, or mount it`,
        { details: { controller, mounts } },
      );
    }
    dirs.add(join(mount.path, parent, id));
  }
  return [...dirs];
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Removes cgroup directories once their last task is gone. A cgroup is busy (EBUSY) for a short while
 * after its last process exited (the kernel finishes the exit asynchronously), so it is retried.
 * Returns those that could not be removed.
 */
export async function removeCgroupDirs(dirs: readonly string[], withinMs = 5000): Promise<string[]> {
  const deadline = Date.now() + withinMs;
  const left: string[] = [];
  for (const dir of dirs) {
    for (;;) {
      try {
        await rmdir(dir);
        break;
      } catch (cause) {
        const code = (cause as NodeJS.ErrnoException).code;
        if (code === "ENOENT") break;
        if (code !== "EBUSY" || Date.now() > deadline) {
          left.push(dir);
          break;
        }
        await sleep(20);
      }
    }
  }
  return left;
}

/** The limits a jailed VM's cgroup gets: CPUs, memory, pids. */
export interface CgroupLimits {
  /** CPU time as a number of CPUs (1.5 = 150 ms per 100 ms period). */
  cpus?: number;
  memoryBytes?: number;
  pids?: number;
}

const CPU_PERIOD_US = 100_000;

/** The cgroup files that set `limits` in the given version, for `jail.cgroups`. */
export function cgroupLimitFiles(limits: CgroupLimits, version: 1 | 2): Record<string, string | number> {
  for (const [name, value] of Object.entries(limits)) {
    if (value !== undefined && (!Number.isFinite(value) || value <= 0)) {
      throw new FirecrackerLaunchError(
        "INVALID_OPTIONS",
        `cgroup limit ${name} must be a positive number, got ${value}`,
        {
          details: { [name]: value },
        },
      );
    }
  }
  const files: Record<string, string | number> = {};
  if (limits.cpus !== undefined) {
    const quota = Math.max(1000, Math.round(limits.cpus * CPU_PERIOD_US));
    if (version === 1) {
      files["cpu.cfs_period_us"] = CPU_PERIOD_US;
      files["cpu.cfs_quota_us"] = quota;
    } else {
      files["cpu.max"] = `${quota} ${CPU_PERIOD_US}`;
    }
  }
  if (limits.memoryBytes !== undefined) {
    files[version === 1 ? "memory.limit_in_bytes" : "memory.max"] = Math.floor(limits.memoryBytes);
  }
  if (limits.pids !== undefined) files["pids.max"] = Math.floor(limits.pids);
  return files;
}
