// A jailed launch: the jailer (chroot, uid/gid, cgroups, netns) inside a pid namespace that the
// launcher owns. The jailer's own --new-pid-ns is not used: its parent exits right after the clone,
// leaving Firecracker reparented to the host's init, and the setuid before exec clears any
// PR_SET_PDEATHSIG, so nothing would kill the VM when its owner dies. Instead `unshare --pid --fork
// --kill-child` makes a root shell the namespace's init; the shell keeps its death signal (it never
// changes credentials), runs the jailer (which execs Firecracker in place) and exits with Firecracker's
// status. When the owner dies, unshare dies (setpriv), the shell gets SIGKILL, and the kernel kills
// every process in the namespace.
import { chown, copyFile, link, mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { constants } from "node:os";
import { basename, dirname, join, posix } from "node:path";
import { z } from "zod";
import { chooseCgroupVersion, jailCgroupDirs, readCgroupMounts, removeCgroupDirs } from "./cgroups.ts";
import { FirecrackerLaunchError } from "./errors.ts";
import { buildJailerArgs, type JailerCommand, type JailerOptions } from "./jailer.ts";

export const UNSHARE_BINARY = "/usr/bin/unshare";
export const SHELL_BINARY = "/bin/sh";

/**
 * The namespace init: runs the jailer in the background with the real stdin (a background job of a
 * non-interactive shell gets /dev/null otherwise), forwards SIGTERM/SIGINT (a pid namespace's init
 * ignores signals it has no handler for), and exits with the VM's status.
 */
const NAMESPACE_INIT =
  'exec 3<&0; "$@" <&3 3<&- & c=$!; exec 3<&-; trap "kill -TERM \\$c 2>/dev/null" TERM INT; ' +
  "while :; do wait $c; s=$?; kill -0 $c 2>/dev/null || exit $s; done";

/** How `launchFirecracker` jails Firecracker: jailer binary, uid/gid, chroot base, cgroups, network namespace. */
export interface JailLaunchOptions {
  /** The jailer executable (an absolute path; the orchestrator resolves `JAILER_BIN` or its artifact path). */
  jailerBinary: string;
  /** The uid and gid Firecracker runs as (the chroot and the files placed with `owned` belong to them). */
  uid: number;
  gid: number;
  /** Base of the chroots: each VM gets `<base>/<firecracker binary name>/<id>/root`; default `/srv/jailer`. */
  chrootBaseDir?: string;
  /** Default: 2 when a cgroup2 hierarchy offers every controller `cgroups` needs, else 1. */
  cgroupVersion?: 1 | 2;
  /** Limits by cgroup file, e.g. v1 `{ "cpu.cfs_quota_us": 50000, "memory.limit_in_bytes": 268435456, "pids.max": 64 }`. */
  cgroups?: Record<string, string | number>;
  /** The cgroup every VM's own cgroup is created under (kept at disposal, shared); default `sbx`. */
  parentCgroup?: string;
  /** A network namespace handle, e.g. `/var/run/netns/sbx-1`. */
  netns?: string;
  resourceLimits?: JailerOptions["resourceLimits"];
  /** Files to place in the chroot before the jailer runs: jailed name → host path (see {@link Jail.place}). */
  files?: Record<string, string>;
  /** Files among `files` that this VM may write: they are chowned to uid/gid (a hard link shares the owner). */
  ownedFiles?: readonly string[];
  /** Files among `files` to copy instead of linking (e.g. a shared vmstate the VM's uid cannot read, then owned). */
  copiedFiles?: readonly string[];
}

/** A jailed Firecracker's jail: uid/gid, chroot, cgroups, and helpers to place files inside it. */
export interface Jail {
  readonly uid: number;
  readonly gid: number;
  /** The chroot on the host (`<base>/<exec name>/<id>/root`). */
  readonly chrootDir: string;
  /** The per-VM cgroup directories the jailer creates (removed at disposal). */
  readonly cgroupDirs: readonly string[];
  readonly cgroupVersion: 1 | 2;
  /** Host path of an absolute path inside the chroot. */
  hostPath(jailedPath: string): string;
  /**
   * Puts host files (regular files or Unix sockets) into the chroot, at `/<name>`: a hard link when on
   * the chroot's file system (a socket keeps working through its link), else a copy (not for sockets).
   * Names in `copied` are copied even on the same file system (a private copy the VM may own or write).
   * Files named in `owned` are chowned to the jail's uid/gid, which changes the source's owner too when
   * linked: own only what belongs to this VM. Returns the jailed path of each name.
   */
  place(
    files: Record<string, string>,
    options?: { owned?: readonly string[] | undefined; copied?: readonly string[] | undefined },
  ): Promise<Record<string, string>>;
}

export interface PreparedJail {
  jail: Jail;
  command: JailerCommand;
  /** `binary` and its arguments: unshare → namespace init → jailer. */
  binary: string;
  args: string[];
  /** Everything outside the chroot that the jail created: the per-VM directory and the cgroups. */
  remove(): Promise<{ leftCgroups: string[] }>;
}

const NAME_PATTERN = /^[A-Za-z0-9._-]+$/;

const absolutePath = z.string().min(1).refine(posix.isAbsolute, "must be an absolute path");
const id32 = z.number().int().min(0).max(0xfffffffe);
const jailedName = z
  .string()
  .regex(NAME_PATTERN)
  .refine((n) => n !== "." && n !== "..", "must be a plain file name");

/** The boundary check of {@link JailLaunchOptions} (unknown keys refused: a typo must not drop a limit). */
export const jailLaunchOptionsSchema = z.strictObject({
  jailerBinary: absolutePath,
  uid: id32,
  gid: id32,
  chrootBaseDir: absolutePath.optional(),
  cgroupVersion: z.union([z.literal(1), z.literal(2)]).optional(),
  cgroups: z.record(z.string(), z.union([z.string().regex(/^[^\n=]*$/), z.number().int()])).optional(),
  parentCgroup: z.string().min(1).optional(),
  netns: absolutePath.optional(),
  resourceLimits: z
    .strictObject({
      fsize: z.number().int().min(0).optional(),
      "no-file": z.number().int().min(0).optional(),
    })
    .optional(),
  files: z.record(jailedName, absolutePath).optional(),
  ownedFiles: z.array(jailedName).optional(),
  copiedFiles: z.array(jailedName).optional(),
});

function invalid(message: string, details: Record<string, unknown>): FirecrackerLaunchError {
  return new FirecrackerLaunchError("INVALID_OPTIONS", message, { details });
}

async function placeFiles(
  chrootDir: string,
  files: Record<string, string>,
  owner: { uid: number; gid: number },
  owned: readonly string[],
  copied: readonly string[],
): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const [name, source] of Object.entries(files)) {
    if (!NAME_PATTERN.test(name) || name === "." || name === "..") {
      throw invalid(`jailed file name ${JSON.stringify(name)} must be a plain file name`, { name });
    }
    const target = join(chrootDir, name);
    await rm(target, { force: true });
    const copy = copied.includes(name);
    try {
      await (copy ? copyFile(source, target) : link(source, target));
    } catch (cause) {
      const code = (cause as NodeJS.ErrnoException).code;
      const info = !copy && code === "EXDEV" ? await stat(source).catch(() => undefined) : undefined;
      if (!info?.isFile()) {
        throw new FirecrackerLaunchError(
          "JAIL_SETUP_FAILED",
          `cannot place ${source} in the jail at ${target}: ${(cause as Error).message}${code === "EXDEV" ? " (only regular files can be copied across file systems)" : ""}`,
          { cause, details: { source, target } },
        );
      }
      await copyFile(source, target);
    }
    if (owned.includes(name)) await chown(target, owner.uid, owner.gid);
    out[name] = `/${name}`;
  }
  return out;
}

/**
 * Checks the jail options, places the requested files and computes the command. Nothing of the jail
 * exists on failure. `firecrackerArgs` are Firecracker's own arguments with jailed paths.
 */
export async function prepareJail(
  jailOptions: JailLaunchOptions,
  firecracker: { binary: string; id: string; firecrackerArgs: readonly string[] },
): Promise<PreparedJail> {
  const parsed = jailLaunchOptionsSchema.safeParse(jailOptions);
  if (!parsed.success) {
    const issues = parsed.error.issues
      .slice(0, 5)
      .map((issue) => `${["jail", ...issue.path].join(".")}: ${issue.message}`)
      .join("; ");
    throw new FirecrackerLaunchError("INVALID_OPTIONS", `invalid jail options: ${issues}`, {
      cause: parsed.error,
      details: { issues: parsed.error.issues },
    });
  }
  const options = parsed.data;
  const parentCgroup = options.parentCgroup ?? "sbx";
  const cgroupFiles = Object.keys(options.cgroups ?? {});
  const mounts = await readCgroupMounts();
  const cgroupVersion = options.cgroupVersion ?? chooseCgroupVersion(mounts, cgroupFiles);
  const command = buildJailerArgs({
    jailerBinary: options.jailerBinary,
    firecrackerBinary: firecracker.binary,
    id: firecracker.id,
    uid: options.uid,
    gid: options.gid,
    chrootBaseDir: options.chrootBaseDir,
    cgroupVersion,
    cgroups: options.cgroups,
    parentCgroup,
    netns: options.netns,
    resourceLimits: options.resourceLimits,
    firecrackerArgs: firecracker.firecrackerArgs,
  });
  if (!posix.isAbsolute(options.jailerBinary)) {
    throw invalid(`jailerBinary must be an absolute path, got ${options.jailerBinary}`, {
      jailerBinary: options.jailerBinary,
    });
  }
  const jailerInfo = await stat(options.jailerBinary).catch(() => undefined);
  if (!jailerInfo?.isFile()) {
    throw new FirecrackerLaunchError("BINARY_NOT_FOUND", `jailer ${options.jailerBinary} does not exist`, {
      details: { jailerBinary: options.jailerBinary },
    });
  }
  if (options.netns !== undefined && !(await stat(options.netns).catch(() => undefined))) {
    throw invalid(`network namespace ${options.netns} does not exist`, { netns: options.netns });
  }
  if (Buffer.byteLength(command.socketPath) > 107) {
    throw invalid(
      `the jailed API socket would be ${command.socketPath} (${Buffer.byteLength(command.socketPath)} bytes, Unix sockets allow 107): use a shorter chrootBaseDir or id`,
      { socketPath: command.socketPath },
    );
  }
  const cgroupDirs = jailCgroupDirs(mounts, cgroupVersion, cgroupFiles, parentCgroup, firecracker.id);
  const vmDir = dirname(command.chrootDir);
  if (await stat(vmDir).catch(() => undefined)) {
    throw invalid(
      `${vmDir} already exists: a VM with id ${firecracker.id} runs, or a jail was left behind; remove it or use another id`,
      { vmDir },
    );
  }
  const owner = { uid: options.uid, gid: options.gid };
  const jail: Jail = {
    uid: options.uid,
    gid: options.gid,
    chrootDir: command.chrootDir,
    cgroupDirs,
    cgroupVersion,
    hostPath: command.hostPath,
    place: (files, placeOptions) =>
      placeFiles(command.chrootDir, files, owner, placeOptions?.owned ?? [], placeOptions?.copied ?? []),
  };
  const remove = async (): Promise<{ leftCgroups: string[] }> => {
    await rm(vmDir, { recursive: true, force: true });
    return { leftCgroups: await removeCgroupDirs(cgroupDirs) };
  };
  try {
    await mkdir(command.chrootDir, { recursive: true, mode: 0o700 });
    if (options.files)
      await jail.place(options.files, { owned: options.ownedFiles, copied: options.copiedFiles });
  } catch (cause) {
    await remove();
    throw cause;
  }
  return {
    jail,
    command,
    binary: UNSHARE_BINARY,
    args: [
      "--pid",
      "--fork",
      "--kill-child=SIGKILL",
      "--",
      SHELL_BINARY,
      "-c",
      NAMESPACE_INIT,
      "sbx-jail",
      command.binary,
      ...command.args,
    ],
    remove,
  };
}

/** Writes a file into the chroot for the VM to read (e.g. its config), readable by the jail's uid. */
export async function writeIntoJail(jail: Jail, name: string, data: string): Promise<string> {
  if (!NAME_PATTERN.test(name))
    throw invalid(`jailed file name ${JSON.stringify(name)} is not plain`, { name });
  const path = join(jail.chrootDir, name);
  await writeFile(path, data, { mode: 0o600 });
  await chown(path, jail.uid, jail.gid);
  return `/${name}`;
}

/** Direct children of `pid` (`/proc/<pid>/task/<pid>/children`). */
export async function childrenOf(pid: number): Promise<number[]> {
  const text = await readFile(`/proc/${pid}/task/${pid}/children`, "utf8").catch(() => "");
  return text.trim().split(/\s+/).filter(Boolean).map(Number);
}

/**
 * The host pid of the jailed Firecracker under `unshare` (`pid`): unshare → namespace init → the jailer,
 * which exec'd Firecracker. Undefined while the chain is not there yet (or no more).
 */
export async function jailedVmPid(pid: number, firecrackerBinary: string): Promise<number | undefined> {
  const [init] = await childrenOf(pid);
  if (init === undefined) return undefined;
  for (const child of await childrenOf(init)) {
    const exe = await readFile(`/proc/${child}/cmdline`, "utf8").catch(() => "");
    if (exe.split("\0")[0] === `/${basename(firecrackerBinary)}`) return child;
  }
  return undefined;
}

/**
 * Firecracker's exit as the launcher reports it unjailed: the namespace init exits with 128 + n when
 * Firecracker was killed by signal n, and unshare passes that on as a plain status.
 */
export function jailedExitStatus(
  exitCode: number | null,
  signal: NodeJS.Signals | null,
): { exitCode: number | null; signal: NodeJS.Signals | null } {
  if (exitCode !== null && exitCode > 128) {
    const name = Object.entries(constants.signals).find(([, number]) => number === exitCode - 128)?.[0];
    if (name) return { exitCode: null, signal: name as NodeJS.Signals };
  }
  return { exitCode, signal };
}
