// Runs the real agent the way a guest runs it, without a VM: chrooted into a busybox root, as a
// child of PID 1 in fresh mount and PID namespaces, inside its own network namespace joined to the
// host by a veth pair. The host reaches it over TCP (the guest address) and over a Unix socket that
// the chroot's /tmp exposes on the host. Needs root, unshare(1) and ip(8).
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { chmod, copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { AgentClient } from "../client.ts";
import { type AgentTransport, tcpTransport, unixSocketTransport } from "../transport.ts";

/** Where the namespaced agent runs and how it is reached. */
export interface NamespacedAgentOptions {
  /** The agent binary (ensureAgentBinary(hostArch()).path). */
  agent: string;
  /** A static busybox for the root (Debian's busybox-static at /bin/busybox). */
  busybox?: string;
  tcpPort?: number;
}

/** A running namespaced agent: how to reach it, its pid, and its clean-up. */
export interface NamespacedAgent extends AsyncDisposable {
  root: string;
  /** Host path of the agent's Unix socket. */
  unixPath: string;
  guestAddress: string;
  tcpPort: number;
  netns: string;
  /** The pid (on the host) of the namespace's PID 1 parent, `unshare`. */
  pid: number;
  tcp(): AgentTransport;
  unix(): AgentTransport;
  /** Output of the namespace's PID 1 so far (the agent's log). */
  log(): string;
}

/** Why this machine cannot run a namespaced agent, or "" when it can. */
export function namespacedAgentUnavailable(): string {
  if (process.getuid?.() !== 0) return "needs root";
  for (const tool of ["unshare", "ip", "chroot"]) {
    if (spawnSync("which", [tool]).status !== 0) return `${tool} is not installed`;
  }
  const probe = spawnSync("unshare", ["-m", "-p", "-n", "-f", "true"], { encoding: "utf8", timeout: 10_000 });
  if (probe.status !== 0)
    return `unshare -m -p -n -f failed: ${(probe.stderr || String(probe.error)).trim()}`;
  return "";
}

let instances = 0;

const PASSWD = `root:x:0:0:root:/root:/bin/sh
sbx:x:1000:1000:sbx:/home/sbx:/bin/sh
other:x:1001:1001:other:/home/other:/bin/sh
`;
const GROUP = `root:x:0:
sbx:x:1000:
other:x:1001:
shared:x:2000:sbx
`;

function ip(...args: string[]): void {
  const result = spawnSync("ip", args, { encoding: "utf8" });
  if (result.status !== 0) throw new Error(`ip ${args.join(" ")}: ${result.stderr.trim()}`);
}

/**
 * A network namespace `netns` joined to the host by a veth pair: `hostIf` on the host, up, with
 * `hostAddress`; `guestIf` moved into the namespace, down and unaddressed, for its init to configure.
 */
export function createVethNamespace(options: {
  netns: string;
  hostIf: string;
  guestIf: string;
  hostAddress: string;
}): void {
  ip("netns", "add", options.netns);
  ip("link", "add", options.hostIf, "type", "veth", "peer", "name", options.guestIf);
  ip("link", "set", options.guestIf, "netns", options.netns);
  ip("addr", "add", options.hostAddress, "dev", options.hostIf);
  ip("link", "set", options.hostIf, "up");
}

/**
 * Undoes a namespaced run: kills `child` (SIGKILL, awaited), deletes the network namespace and the host
 * end of its veth pair, then removes `base` unless a mount still points into it.
 */
export async function removeNamespacedRun(run: {
  child: ChildProcess | undefined;
  netns: string;
  hostIf: string;
  base: string;
}): Promise<void> {
  const { child } = run;
  if (child && child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
  }
  spawnSync("ip", ["netns", "delete", run.netns]);
  spawnSync("ip", ["link", "delete", run.hostIf]);
  // The mount namespace died with PID 1; never delete through a mount still present.
  const mounts = spawnSync("cat", ["/proc/self/mountinfo"], { encoding: "utf8" }).stdout;
  if (!mounts.includes(run.base)) await rm(run.base, { recursive: true, force: true });
}

/** Runs the real agent in a root filesystem under its own mount, PID and network namespaces. */
export async function startNamespacedAgent(options: NamespacedAgentOptions): Promise<NamespacedAgent> {
  const n = instances++ % 250;
  const tag = `${process.pid.toString(36)}${n}`;
  const netns = `sbx-agent-${tag}`;
  const hostIf = `sbxah${tag}`.slice(0, 15);
  const guestIf = `sbxag${tag}`.slice(0, 15);
  const subnet = `10.${200 + (process.pid % 50)}.${n}`;
  const guestAddress = `${subnet}.2`;
  const tcpPort = options.tcpPort ?? 49983;
  const base = await mkdtemp(join(tmpdir(), "sbx-agent-ns-"));
  const root = join(base, "root");
  let child: ChildProcess | undefined;
  let output = () => "";
  const cleanup = () => removeNamespacedRun({ child, netns, hostIf, base });
  try {
    for (const dir of [
      "bin",
      "etc",
      "proc",
      "dev",
      "root",
      "home/sbx",
      "home/other",
      ".sbx",
      "tmp",
      "data",
    ]) {
      await mkdir(join(root, dir), { recursive: true });
    }
    await chmod(join(root, "tmp"), 0o1777);
    await chmod(join(root, "root"), 0o700);
    await copyFile(options.busybox ?? "/bin/busybox", join(root, "bin/busybox"));
    await chmod(join(root, "bin/busybox"), 0o755);
    await symlink("busybox", join(root, "bin/sh"));
    await copyFile(options.agent, join(root, ".sbx/agent"));
    await chmod(join(root, ".sbx/agent"), 0o755);
    await writeFile(join(root, "etc/passwd"), PASSWD);
    await writeFile(join(root, "etc/group"), GROUP);
    spawnSync("chown", ["1000:1000", join(root, "home/sbx")]);
    spawnSync("chown", ["1001:1001", join(root, "home/other")]);
    const init = `set -e
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t tmpfs -o mode=755 tmpfs /dev
mknod -m 666 /dev/null c 1 3
mknod -m 666 /dev/zero c 1 5
mknod -m 666 /dev/random c 1 8
mknod -m 666 /dev/urandom c 1 9
mkdir /dev/pts
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
ip link set lo up
set +e
# Restarted when it dies, as the guest init does.
while :; do /.sbx/agent --tcp 0.0.0.0:${tcpPort} --unix /tmp/sbx-agent.sock; echo "agent exited with $?"; sleep 0.1; done
`;
    await writeFile(join(root, ".sbx/test-init"), init);
    createVethNamespace({ netns, hostIf, guestIf, hostAddress: `${subnet}.1/30` });
    ip("-n", netns, "addr", "add", `${guestAddress}/30`, "dev", guestIf);
    ip("-n", netns, "link", "set", guestIf, "up");
    const spawned = spawnInNamespacedChroot({
      netns,
      root,
      command: ["/bin/busybox", "sh", "/.sbx/test-init"],
    });
    child = spawned.child;
    output = spawned.output;
    const unixPath = join(root, "tmp/sbx-agent.sock");
    const agent: NamespacedAgent = {
      root,
      unixPath,
      guestAddress,
      tcpPort,
      netns,
      pid: child.pid ?? 0,
      tcp: () => tcpTransport({ host: guestAddress, port: tcpPort }),
      unix: () => unixSocketTransport({ path: unixPath }),
      log: () => output(),
      [Symbol.asyncDispose]: cleanup,
    };
    await using probe = new AgentClient(agent.unix(), { connectTimeoutMs: 15_000 });
    await probe.health();
    return agent;
  } catch (error) {
    await cleanup();
    throw new Error(`starting the namespaced agent failed: ${String(error)}\n${output()}`, { cause: error });
  }
}

/**
 * Runs `command` chrooted into `root`, inside network namespace `netns` and new mount and PID namespaces
 * (and a UTS one with `uts`), as a guest's userland runs; `output()` is what it printed so far.
 */
export function spawnInNamespacedChroot(options: {
  netns: string;
  root: string;
  command: readonly string[];
  env?: Record<string, string>;
  uts?: boolean;
}): { child: ChildProcess; output: () => string } {
  const child = spawn(
    "ip",
    [
      "netns",
      "exec",
      options.netns,
      "unshare",
      "-m",
      ...(options.uts ? ["-u"] : []),
      "-p",
      "-f",
      "--kill-child",
      "chroot",
      options.root,
      ...options.command,
    ],
    { stdio: ["ignore", "pipe", "pipe"], env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", ...options.env } },
  );
  let output = "";
  const append = (chunk: Buffer) => {
    output += chunk.toString();
  };
  child.stdout?.on("data", append);
  child.stderr?.on("data", append);
  return { child, output: () => output };
}

/** Waits until `predicate` holds, polling; for counts that settle after a close. */
export async function settle<T>(
  read: () => T | Promise<T>,
  predicate: (value: T) => boolean,
  timeoutMs = 5000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (predicate(value) || Date.now() > deadline) return value;
    await sleep(20);
  }
}
