import { createHash } from "node:crypto";
import { lstat, mkdir, open, readFile, readlink, rm, symlink } from "node:fs/promises";
import { join, posix } from "node:path";
import { archSchema, detectBinaryArch } from "@sbx/arch";
import { z } from "zod";
import { readElfLinkage } from "./elf.ts";
import { RootfsError } from "./errors.ts";
import {
  guestLibraryScript,
  initScript,
  provisionRunnerScript,
  setupNetworkScript,
  setupNetworkUnit,
} from "./guest-scripts.ts";

/** Where everything sbx adds to an image lives; applet links are created only here. */
export const GUEST_DIR = "/.sbx";
/** The guest path of sbx's init script, the kernel's `init=`. */
export const GUEST_INIT = "/.sbx/init";
/** The guest path of the injected static busybox. */
export const GUEST_BUSYBOX = "/.sbx/bin/busybox";
/** The in-guest agent (@sbx/agent), started and kept running by /.sbx/init. */
export const GUEST_AGENT = "/.sbx/agent";
/** `<version> <sha256>` of the installed agent, for the host to check what a template carries. */
export const GUEST_AGENT_VERSION_FILE = "/.sbx/agent.version";
/** The systemd unit sbx installs in guests whose init is systemd, to configure the network. */
export const SETUP_NETWORK_UNIT = "/etc/systemd/system/setup-network.service";
const SETUP_NETWORK_WANTS = "/etc/systemd/system/multi-user.target.wants/setup-network.service";
const MAX_SYMLINKS = 40;

/**
 * Lists the applets compiled into a busybox binary of any architecture by finding its packed
 * `applet_names` table ("[\0[[\0acpid\0..."), so a foreign-arch busybox need not be executed.
 */
export async function listBusyboxApplets(path: string): Promise<string[]> {
  return appletsFromBinary(await readFile(path), path);
}

function appletsFromBinary(data: Buffer, path: string): string[] {
  const start = data.indexOf(Buffer.from("\0[\0[[\0", "latin1"));
  if (start < 0) {
    throw new RootfsError("INJECT_FAILED", `${path} has no busybox applet table; is it busybox?`, {
      details: { path },
    });
  }
  const applets: string[] = [];
  let offset = start + 1;
  while (offset < data.length) {
    const end = data.indexOf(0, offset);
    if (end <= offset) break;
    const name = data.toString("latin1", offset, end);
    if (!/^[[\w.-]+$/.test(name) || name.length > 64) break;
    applets.push(name);
    offset = end + 1;
  }
  return applets;
}

/**
 * Resolves `path` (absolute, as the guest sees it) to a host path inside `root`, following
 * symlinks the way the guest would but never out of `root`: `..` stops at the root and absolute
 * link targets restart at it (as containerd's and umoci's securejoin do). Missing components are
 * created as directories when `createDirs` is set.
 */
export async function resolveInRoot(root: string, path: string, createDirs = false): Promise<string> {
  const pending = path.split("/").filter((c) => c !== "" && c !== ".");
  const resolved: string[] = [];
  let links = 0;
  while (pending.length > 0) {
    const component = pending.shift() as string;
    if (component === "..") {
      resolved.pop();
      continue;
    }
    const host = join(root, ...resolved, component);
    let st: Awaited<ReturnType<typeof lstat>> | undefined;
    try {
      st = await lstat(host);
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code !== "ENOENT") throw cause;
    }
    if (st?.isSymbolicLink()) {
      if (++links > MAX_SYMLINKS) {
        throw new RootfsError("INJECT_FAILED", `too many symlinks resolving ${path} in ${root}`, {
          details: { root, path },
        });
      }
      const target = await readlink(host);
      if (target.startsWith("/")) resolved.length = 0;
      pending.unshift(...target.split("/").filter((c) => c !== "" && c !== "."));
      continue;
    }
    if (st === undefined && createDirs && pending.length > 0) {
      await mkdir(host, { mode: 0o755 });
    } else if (st !== undefined && pending.length > 0 && !st.isDirectory()) {
      throw new RootfsError(
        "INJECT_FAILED",
        `${posix.join("/", ...resolved, component)} in the image is not a directory`,
        {
          details: { root, path },
        },
      );
    }
    resolved.push(component);
  }
  return join(root, ...resolved);
}

async function writeNew(hostPath: string, content: string | Uint8Array, mode: number): Promise<void> {
  // O_EXCL: never replaces (or writes through) anything the image already has at this name.
  const handle = await open(hostPath, "wx", mode);
  try {
    await handle.writeFile(content);
    await handle.chmod(mode);
  } finally {
    await handle.close();
  }
}

export const injectGuestFilesOptionsSchema = z.object({
  /** The unpacked image (staging directory). */
  root: z.string().min(1),
  /**
   * Busybox to inject: what resolveBusybox returned (its sha256 is checked again against the bytes
   * actually copied, so a file swapped after resolution is caught), or a plain path.
   */
  busybox: z.union([z.string().min(1), z.object({ path: z.string().min(1), sha256: z.string().optional() })]),
  /**
   * The guest agent to install at /.sbx/agent: the path of a built agent (for @sbx/agent's builds,
   * `{agentBinaryDir()}/{version}/{arch}/sbx-agent`, resolved with @sbx/arch's resolveArtifact like
   * busybox) with its version, its sha256 (checked against the bytes copied) and the arch it must be
   * built for (checked in its ELF header, and that it is static). Without it no agent is installed.
   */
  agent: z
    .object({
      path: z.string().min(1),
      version: z.string().regex(/^[0-9A-Za-z.+-]{1,64}$/),
      sha256: z
        .string()
        .regex(/^[0-9a-f]{64}$/)
        .optional(),
      arch: archSchema.optional(),
    })
    .optional(),
  /** argv init execs after setup. Default: the image's /sbin/init, else /bin/sh, else busybox sh. */
  workload: z.array(z.string().min(1)).min(1).optional(),
  /** The template's provisioning script, written to /.sbx/provision.sh and run once by the runner. */
  provisionScript: z.union([z.string(), z.instanceof(Uint8Array)]).optional(),
  /** Install and enable setup-network.service. "auto": when the image's init is systemd. */
  systemd: z.union([z.boolean(), z.literal("auto")]).default("auto"),
  /** Files the provisioning runner makes immutable with chattr +i. */
  immutableFiles: z.array(z.string().regex(/^\/[A-Za-z0-9._/-]+$/)).default(["/etc/resolv.conf"]),
  /** The image build time for the APT clock fallback; default now. */
  buildEpochSeconds: z.number().int().positive().optional(),
});
/** What `injectGuestFiles` writes into a root filesystem tree: busybox, init, provisioning, workload, agent. */
export type InjectGuestFilesOptions = z.input<typeof injectGuestFilesOptionsSchema>;

/** What `injectGuestFiles` wrote: guest files, busybox applets, the workload, `init=`, and the digest of the generated files. */
export interface InjectGuestFilesResult {
  /** Guest paths written, directories excluded. */
  files: string[];
  applets: string[];
  workload: string[];
  systemd: boolean;
  /** The `init=` value for buildKernelCmdline. */
  init: string;
  /**
   * sha256 over every generated guest file (init, library, provisioning runner, network setup, the
   * provisioning script, the agent) with the build clock left out: a template build input, so a
   * change to any of them makes the template drift.
   */
  guestFilesSha256: string;
}

/**
 * Adds sbx's guest files to an unpacked image without touching the image's own files: busybox at
 * /.sbx/bin/busybox with applet symlinks only in /.sbx/bin, /.sbx/init, the provisioning runner,
 * the network script, the guest agent at /.sbx/agent when one is given (the init starts it) and,
 * for systemd images, an enabled setup-network.service. Refuses an image
 * that already has /.sbx; creates /proc, /sys, /dev, /run and /tmp only when missing.
 */
function digestGuestFiles(files: readonly (readonly [string, string | Uint8Array, number])[]): string {
  const hash = createHash("sha256");
  for (const [path, content, mode] of [...files].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
    const bytes = typeof content === "string" ? Buffer.from(content) : content;
    hash.update(`${path}\0${mode.toString(8)}\0${bytes.length}\0`).update(bytes);
  }
  return hash.digest("hex");
}

/** Writes sbx's guest files (busybox and its applets, init, provisioning script, agent) into a root filesystem tree. */
export async function injectGuestFiles(input: InjectGuestFilesOptions): Promise<InjectGuestFilesResult> {
  const parsed = injectGuestFilesOptionsSchema.safeParse(input);
  if (!parsed.success) {
    throw new RootfsError("INVALID_OPTIONS", `injectGuestFiles: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
    });
  }
  const options = parsed.data;
  const root = options.root;
  const busyboxPath = typeof options.busybox === "string" ? options.busybox : options.busybox.path;
  const files: string[] = [];
  try {
    await lstat(join(root, GUEST_DIR));
    throw new RootfsError("INJECT_FAILED", `the image already has ${GUEST_DIR}; sbx will not overwrite it`, {
      details: { root },
    });
  } catch (cause) {
    if (cause instanceof RootfsError) throw cause;
    if ((cause as NodeJS.ErrnoException).code !== "ENOENT") throw cause;
  }
  // Everything that can fail without writing comes first: read and re-verify busybox, list its
  // applets, decide the workload and generate the scripts.
  const busyboxBytes = await readFile(busyboxPath);
  const expected = typeof options.busybox === "string" ? undefined : options.busybox.sha256;
  if (expected) {
    const actual = createHash("sha256").update(busyboxBytes).digest("hex");
    if (actual !== expected) {
      throw new RootfsError(
        "BUSYBOX_CHECKSUM_MISMATCH",
        `${busyboxPath} changed after it was verified (sha256 ${actual}, verified ${expected}); resolve it again`,
        { details: { path: busyboxPath, expected, actual } },
      );
    }
  }
  const applets = appletsFromBinary(busyboxBytes, busyboxPath).filter((a) => a !== "busybox");
  const agent = options.agent ? await readGuestAgent(options.agent) : undefined;
  const workload = options.workload ?? (await defaultWorkload(root));
  const systemd = options.systemd === "auto" ? await usesSystemd(root, workload) : options.systemd;
  const scripts: [string, string | Uint8Array, number][] = [
    [
      "/.sbx/lib.sh",
      guestLibraryScript({
        buildEpochSeconds: options.buildEpochSeconds ?? Math.floor(Date.now() / 1000),
        immutableFiles: options.immutableFiles,
      }),
      0o644,
    ],
    [GUEST_INIT, initScript(workload), 0o755],
    ["/.sbx/provision-runner", provisionRunnerScript(), 0o755],
    ["/.sbx/setup-network", setupNetworkScript(), 0o755],
  ];
  if (options.provisionScript !== undefined)
    scripts.push(["/.sbx/provision.sh", options.provisionScript, 0o755]);
  const guestFilesSha256 = digestGuestFiles([
    // The library script as it would be with the clock at 0: the build time is not an input.
    [
      "/.sbx/lib.sh",
      guestLibraryScript({ buildEpochSeconds: 0, immutableFiles: options.immutableFiles }),
      0o644,
    ],
    ...scripts.slice(1),
    ...(agent ? [["/.sbx/agent", agent.sha256, 0o755] as [string, string, number]] : []),
  ]);

  for (const [dir, mode] of [
    ["/proc", 0o555],
    ["/sys", 0o555],
    ["/dev", 0o755],
    ["/run", 0o755],
    ["/tmp", 0o1777],
  ] as const) {
    const host = await resolveInRoot(root, dir, true);
    try {
      await mkdir(host, { mode });
      const handle = await open(host, "r");
      await handle.chmod(mode).finally(() => handle.close());
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code !== "EEXIST") throw cause;
    }
  }
  const guest = join(root, GUEST_DIR);
  await mkdir(guest, { mode: 0o755 });
  try {
    await mkdir(join(guest, "bin"), { mode: 0o755 });
    await writeNew(join(root, GUEST_BUSYBOX), busyboxBytes, 0o755);
    files.push(GUEST_BUSYBOX);
    for (const applet of applets) {
      await symlink("busybox", join(guest, "bin", applet));
    }
    for (const [path, content, mode] of scripts) {
      await writeNew(join(root, path), content, mode);
      files.push(path);
    }
    if (agent) {
      await writeNew(join(root, GUEST_AGENT), agent.bytes, 0o755);
      await writeNew(join(root, GUEST_AGENT_VERSION_FILE), `${agent.version} ${agent.sha256}\n`, 0o644);
      files.push(GUEST_AGENT, GUEST_AGENT_VERSION_FILE);
    }
    if (systemd) {
      await installSetupNetworkService(root);
      files.push(SETUP_NETWORK_UNIT, SETUP_NETWORK_WANTS);
    }
  } catch (error) {
    // /.sbx did not exist before this call, so removing it removes only what sbx wrote.
    await rm(guest, { recursive: true, force: true });
    throw error;
  }
  return { files, applets, workload, systemd, init: GUEST_INIT, guestFilesSha256 };
}

/**
 * Reads the agent once and checks those bytes: the sha256 when one was given, the ELF machine when an
 * arch was given, and static linkage (it runs in images without a compatible libc).
 */
async function readGuestAgent(agent: {
  path: string;
  version: string;
  sha256?: string | undefined;
  arch?: "amd64" | "arm64" | undefined;
}): Promise<{ bytes: Buffer; version: string; sha256: string }> {
  const bytes = await readFile(agent.path).catch((cause: unknown) => {
    throw new RootfsError(
      "INJECT_FAILED",
      `cannot read the guest agent ${agent.path}: build it (pnpm --filter @sbx/agent build:native)`,
      {
        cause,
        details: { path: agent.path },
      },
    );
  });
  const sha256 = createHash("sha256").update(bytes).digest("hex");
  if (agent.sha256 && sha256 !== agent.sha256) {
    throw new RootfsError(
      "INJECT_FAILED",
      `the guest agent ${agent.path} has sha256 ${sha256}, expected ${agent.sha256}; rebuild or resolve it again`,
      { details: { path: agent.path, expected: agent.sha256, actual: sha256, reason: "checksum" } },
    );
  }
  if (agent.arch) {
    const detected = await detectBinaryArch(agent.path).catch((cause: unknown) => {
      throw new RootfsError("INJECT_FAILED", `the guest agent ${agent.path} is not an ELF executable`, {
        cause,
        details: { path: agent.path, reason: "arch" },
      });
    });
    if (detected.arch !== agent.arch) {
      throw new RootfsError(
        "INJECT_FAILED",
        `the guest agent ${agent.path} is built for ${detected.arch}, the image is ${agent.arch}; build the ${agent.arch} agent`,
        { details: { path: agent.path, expected: agent.arch, actual: detected.arch, reason: "arch" } },
      );
    }
  }
  const linkage = await readElfLinkage(agent.path);
  if (!linkage.static) {
    throw new RootfsError(
      "INJECT_FAILED",
      `the guest agent ${agent.path} is dynamically linked; the guest may have no compatible libc. Build it with -static`,
      { details: { path: agent.path, reason: "not-static" } },
    );
  }
  return { bytes, version: agent.version, sha256 };
}

async function existsInRoot(root: string, path: string): Promise<string | undefined> {
  const host = await resolveInRoot(root, path);
  try {
    const st = await lstat(host);
    return st.isFile() ? host : undefined;
  } catch {
    return undefined;
  }
}

async function defaultWorkload(root: string): Promise<string[]> {
  if (await existsInRoot(root, "/sbin/init")) return ["/sbin/init"];
  if (await existsInRoot(root, "/bin/sh")) return ["/bin/sh"];
  return [GUEST_BUSYBOX, "sh"];
}

/** True when the workload (or /sbin/init) resolves inside the image to a file named systemd. */
async function usesSystemd(root: string, workload: readonly string[]): Promise<boolean> {
  const program = workload[0] ?? "/sbin/init";
  const host = await existsInRoot(root, program);
  return host !== undefined && posix.basename(host) === "systemd";
}

async function installSetupNetworkService(root: string): Promise<void> {
  const unit = setupNetworkUnit();
  const unitHost = await resolveInRoot(root, SETUP_NETWORK_UNIT, true);
  try {
    await writeNew(unitHost, unit, 0o644);
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code !== "EEXIST") throw cause;
    const existing = await readFile(unitHost, "utf8").catch(() => undefined);
    if (existing !== unit) {
      throw new RootfsError(
        "INJECT_FAILED",
        `the image already has a different ${SETUP_NETWORK_UNIT}; remove it from the image or pass systemd: false`,
        { cause, details: { root } },
      );
    }
  }
  const wantsHost = await resolveInRoot(root, SETUP_NETWORK_WANTS, true);
  try {
    await symlink(SETUP_NETWORK_UNIT, wantsHost);
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code !== "EEXIST") throw cause;
    const target = await readlink(wantsHost).catch(() => undefined);
    if (target !== SETUP_NETWORK_UNIT) {
      throw new RootfsError(
        "INJECT_FAILED",
        `the image already has ${SETUP_NETWORK_WANTS} pointing elsewhere`,
        {
          cause,
          details: { root, target },
        },
      );
    }
  }
}
