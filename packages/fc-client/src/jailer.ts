import { chown, copyFile, link, mkdir, rm } from "node:fs/promises";
import { basename, isAbsolute, join, posix } from "node:path";
import { FirecrackerLaunchError } from "./errors.ts";

/** What `buildJailerArgs` turns into a jailer command line. */
export interface JailerOptions {
  /** The jailer executable; default `jailer`. */
  jailerBinary?: string;
  /** The Firecracker binary the jailer copies into the chroot and execs (`--exec-file`). */
  firecrackerBinary: string;
  /** VM id: alphanumerics and hyphens, at most 64 characters. */
  id: string;
  uid: number;
  gid: number;
  /** `--chroot-base-dir`; default `/srv/jailer`. */
  chrootBaseDir?: string | undefined;
  /** `--cgroup-version`; default 2 (the jailer itself defaults to 1). */
  cgroupVersion?: 1 | 2;
  /** `--cgroup <file>=<value>` entries, e.g. `{ "cpu.max": "50000 100000", "memory.max": "256M" }`. */
  cgroups?: Record<string, string | number> | undefined;
  /** `--parent-cgroup`, a path relative to the cgroup root. */
  parentCgroup?: string;
  /** `--netns`: a network namespace handle such as `/var/run/netns/sbx-1`. */
  netns?: string | undefined;
  /** `--resource-limit` entries (`fsize`, `no-file`). */
  resourceLimits?: { fsize?: number | undefined; "no-file"?: number | undefined } | undefined;
  /** `--new-pid-ns`: the Firecracker pid then differs from the jailer's (see `pidFile`). */
  newPidNs?: boolean;
  /** `--daemonize`: the jailer detaches and closes stdio (not usable with launchFirecracker). */
  daemonize?: boolean;
  /** The API socket path as Firecracker sees it inside the chroot; default `/run/firecracker.socket`. */
  apiSocket?: string;
  /** Arguments forwarded to Firecracker after `--` (paths in them must be chroot paths). */
  firecrackerArgs?: readonly string[];
}

/** A jailer command line: the binary, its arguments, and where the jail's paths land on the host. */
export interface JailerCommand {
  binary: string;
  /** The jailer's argv (without the binary), Firecracker's arguments after `--`. */
  args: string[];
  /** `<chroot_base>/<exec_file_name>/<id>/root`. */
  chrootDir: string;
  /** Where the API socket appears on the host. */
  socketPath: string;
  /** Where the jailer writes Firecracker's pid with `--new-pid-ns`. */
  pidFile: string;
  /** Host path of a file at `jailedPath` (an absolute path inside the chroot). */
  hostPath(jailedPath: string): string;
}

const ID_PATTERN = /^[A-Za-z0-9-]{1,64}$/;

function invalid(message: string, details: Record<string, unknown>): FirecrackerLaunchError {
  return new FirecrackerLaunchError("INVALID_OPTIONS", message, { details });
}

/**
 * Builds the jailer command line for one VM (see Firecracker's jailer.md): uid/gid, chroot base,
 * cgroup v2 by default, netns, resource limits, and Firecracker's own arguments after `--`, with the
 * API socket mapped into the chroot. Files the VM needs (kernel, drives, snapshot) must be linked or
 * copied into `chrootDir` and referred to by their jailed paths (see {@link jailedPaths}).
 */
export function buildJailerArgs(options: JailerOptions): JailerCommand {
  const { id, uid, gid } = options;
  if (!ID_PATTERN.test(id)) {
    throw invalid(`jailer id ${JSON.stringify(id)} must be 1-64 alphanumerics or hyphens`, { id });
  }
  for (const [name, value] of [
    ["uid", uid],
    ["gid", gid],
  ] as const) {
    if (!Number.isInteger(value) || value < 0 || value > 0xfffffffe) {
      throw invalid(`jailer ${name} must be a non-negative integer, got ${value}`, { [name]: value });
    }
  }
  if (!isAbsolute(options.firecrackerBinary)) {
    throw invalid(
      `firecrackerBinary must be an absolute path (the jailer requires it), got ${options.firecrackerBinary}`,
      {
        firecrackerBinary: options.firecrackerBinary,
      },
    );
  }
  const chrootBaseDir = options.chrootBaseDir ?? "/srv/jailer";
  if (!isAbsolute(chrootBaseDir))
    throw invalid(`chrootBaseDir must be absolute, got ${chrootBaseDir}`, { chrootBaseDir });
  const apiSocket = options.apiSocket ?? "/run/firecracker.socket";
  if (!posix.isAbsolute(apiSocket))
    throw invalid(`apiSocket must be an absolute path inside the chroot`, { apiSocket });
  const cgroupVersion = options.cgroupVersion ?? 2;
  const execName = basename(options.firecrackerBinary);
  const chrootDir = join(chrootBaseDir, execName, id, "root");

  const args = [
    "--id",
    id,
    "--exec-file",
    options.firecrackerBinary,
    "--uid",
    String(uid),
    "--gid",
    String(gid),
    "--chroot-base-dir",
    chrootBaseDir,
    "--cgroup-version",
    String(cgroupVersion),
  ];
  for (const [file, value] of Object.entries(options.cgroups ?? {})) {
    if (!/^[a-z0-9_]+\.[A-Za-z0-9_.]+$/.test(file)) {
      throw invalid(`cgroup file ${JSON.stringify(file)} must look like <controller>.<knob>, e.g. cpu.max`, {
        file,
      });
    }
    args.push("--cgroup", `${file}=${value}`);
  }
  if (options.parentCgroup !== undefined) {
    if (options.parentCgroup.startsWith("/") || options.parentCgroup.split("/").includes("..")) {
      throw invalid(`parentCgroup must be a relative path without "..", got ${options.parentCgroup}`, {
        parentCgroup: options.parentCgroup,
      });
    }
    args.push("--parent-cgroup", options.parentCgroup);
  }
  if (options.netns !== undefined) args.push("--netns", options.netns);
  for (const [resource, value] of Object.entries(options.resourceLimits ?? {})) {
    if (value === undefined) continue;
    if (!Number.isInteger(value) || value < 0)
      throw invalid(`resource limit ${resource} must be a non-negative integer`, { resource });
    args.push("--resource-limit", `${resource}=${value}`);
  }
  if (options.newPidNs) args.push("--new-pid-ns");
  if (options.daemonize) args.push("--daemonize");
  args.push("--", "--api-sock", apiSocket, ...(options.firecrackerArgs ?? []));

  const hostPath = (jailedPath: string): string => {
    if (!posix.isAbsolute(jailedPath) || jailedPath.split("/").includes("..")) {
      throw invalid(`jailed path must be absolute and stay inside the chroot, got ${jailedPath}`, {
        jailedPath,
      });
    }
    return join(chrootDir, posix.normalize(jailedPath));
  };
  return {
    binary: options.jailerBinary ?? "jailer",
    args,
    chrootDir,
    socketPath: hostPath(apiSocket),
    pidFile: join(chrootDir, `${execName}.pid`),
    hostPath,
  };
}

/**
 * Maps host files into a jail: for each entry `{ name: hostPath }` returns the jailed path (`/name`)
 * to use in API calls and the host path inside the chroot to hard-link or copy the file to.
 */
export function jailedPaths(
  chrootDir: string,
  files: Record<string, string>,
): Record<string, { hostSource: string; hostTarget: string; jailedPath: string }> {
  const out: Record<string, { hostSource: string; hostTarget: string; jailedPath: string }> = {};
  for (const [name, hostSource] of Object.entries(files)) {
    if (!/^[A-Za-z0-9._-]+$/.test(name) || name === "." || name === "..") {
      throw invalid(`jailed file name ${JSON.stringify(name)} must be a plain file name`, { name });
    }
    out[name] = { hostSource, hostTarget: join(chrootDir, name), jailedPath: `/${name}` };
  }
  return out;
}

/**
 * Puts host files into a jail before launch: hard-links each one to `<chrootDir>/<name>` (copies when
 * the chroot is on another filesystem), owned by `uid`/`gid` so the jailed Firecracker can open it.
 * Returns the jailed paths to use in the VM config. Existing targets are replaced.
 */
export async function linkIntoJail(
  chrootDir: string,
  files: Record<string, string>,
  owner: { uid: number; gid: number },
): Promise<Record<string, string>> {
  const mapped = jailedPaths(chrootDir, files);
  await mkdir(chrootDir, { recursive: true });
  const out: Record<string, string> = {};
  for (const [name, entry] of Object.entries(mapped)) {
    await rm(entry.hostTarget, { force: true });
    try {
      await link(entry.hostSource, entry.hostTarget);
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code !== "EXDEV") {
        throw new FirecrackerLaunchError(
          "INVALID_OPTIONS",
          `cannot link ${entry.hostSource} into the jail at ${entry.hostTarget}: ${(cause as Error).message}`,
          { cause, details: { ...entry } },
        );
      }
      await copyFile(entry.hostSource, entry.hostTarget);
    }
    await chown(entry.hostTarget, owner.uid, owner.gid);
    out[name] = entry.jailedPath;
  }
  return out;
}
