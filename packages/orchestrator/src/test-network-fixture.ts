// Test-only: a "fake internet" namespace (HTTP servers, a dnsmasq resolver, a fake metadata address)
// standing in for the uplink, and fake guests (a namespace behind a veth that takes the TAP's name and
// address) standing in for Firecracker. Sandboxes of the test pool are routed to the fake internet by
// policy routing and to nothing else: no test packet can leave this machine, even if a rule is wrong.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runCommand } from "./exec.ts";
import { hasCommand } from "./test-capabilities.ts";

/** Why the fake-internet tests cannot run here, or undefined when they can. */
export function fakeInternetSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root for ip netns and nft";
  if (!hasCommand("ip", ["-V"])) return "needs iproute2 (ip)";
  if (!hasCommand("nft", ["--version"])) return "needs nftables (nft; scripts/apt-packages.txt)";
  if (!hasCommand("dnsmasq", ["--version"])) return "needs dnsmasq (dnsmasq-base; scripts/apt-packages.txt)";
  if (!hasCommand("busybox", ["true"])) return "needs busybox (httpd, nslookup, nc)";
  if (!hasCommand("curl", ["--version"])) return "needs curl";
  return undefined;
}

/** Per test file: a slot makes pool, addresses, names and tables distinct from concurrent test processes. */
export function testSlot(fileSalt: number): number {
  return (process.pid * 7 + fileSalt) % 250;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitForListener(namespace: string, address: string, port: number, protocol: "tcp" | "udp") {
  const flag = protocol === "tcp" ? "-ltnH" : "-lunH";
  for (let attempt = 0; attempt < 100; attempt++) {
    const { stdout } = await runCommand(["ip", "netns", "exec", namespace, "ss", flag]);
    if (stdout.includes(`${address}:${port}`)) return;
    await sleep(50);
  }
  throw new Error(`nothing listens on ${address}:${port}/${protocol} in ${namespace}`);
}

export class ProcessGroup {
  readonly #children: ChildProcess[] = [];

  spawnIn(namespace: string, argv: string[]): ChildProcess {
    const child = spawn("ip", ["netns", "exec", namespace, ...argv], { stdio: ["pipe", "ignore", "ignore"] });
    child.on("error", () => undefined);
    this.#children.push(child);
    return child;
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.#children.splice(0).map(
        (child) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve();
            child.once("exit", () => resolve());
            child.kill("SIGKILL");
          }),
      ),
    );
  }
}

export interface FakeInternet {
  namespace: string;
  hostVeth: string;
  /** The host's address on the fake uplink: one of the host's own addresses. */
  hostAddress: string;
  /** An HTTP server answering "internet <address>". */
  web: string;
  /** A second HTTP server, for deny lists. */
  other: string;
  resolver: string;
  /** A name dnsmasq answers with `web`. */
  webName: string;
  /** 169.254.169.254, served in the fake internet: it answers only if a rule is wrong. */
  metadata: string;
  /** The sandbox address pool these tests use, routed to the fake internet only. */
  hostAddressPool: string;
  close(): Promise<void>;
}

/** Builds the fake internet for sandboxes whose veths come from `10.201.{slot}.0/24`. */
export async function createFakeInternet(slot: number): Promise<FakeInternet> {
  const namespace = `sbxinet${process.pid}`;
  const hostVeth = `sbi${process.pid}`.slice(0, 15);
  const net = `198.18.${slot}`;
  const hostAddressPool = `10.201.${slot}.0/24`;
  const table = String(20_000 + slot);
  const priority = String(20_000 + slot * 2);
  const processes = new ProcessGroup();
  const webRoot = mkdtempSync(join(tmpdir(), "sbx-fake-internet-"));
  const close = async () => {
    await processes.stop();
    await runCommand(["ip", "rule", "del", "priority", priority]).catch(() => undefined);
    await runCommand(["ip", "rule", "del", "priority", String(Number(priority) + 1)]).catch(() => undefined);
    await runCommand(["ip", "route", "flush", "table", table]).catch(() => undefined);
    await runCommand(["ip", "link", "del", hostVeth]).catch(() => undefined);
    await runCommand(["ip", "netns", "del", namespace]).catch(() => undefined);
    rmSync(webRoot, { recursive: true, force: true });
  };
  try {
    await runCommand(["ip", "netns", "add", namespace]);
    await runCommand([
      "ip",
      "link",
      "add",
      hostVeth,
      "type",
      "veth",
      "peer",
      "name",
      "eth0",
      "netns",
      namespace,
    ]);
    await runCommand(["ip", "-batch", "-"], {
      input: `addr add ${net}.254/24 dev ${hostVeth}\nlink set ${hostVeth} up\n`,
    });
    await runCommand(["ip", "-n", namespace, "-batch", "-"], {
      input: [
        "link set lo up",
        `addr add ${net}.1/24 dev eth0`,
        `addr add ${net}.2/24 dev eth0`,
        `addr add ${net}.53/24 dev eth0`,
        "addr add 169.254.169.254/32 dev lo",
        "link set eth0 up",
        `route add default via ${net}.254`,
        "",
      ].join("\n"),
    });
    // The sandboxes' traffic: the main table without its default route (connected routes, the veths),
    // then the fake internet's table, whose only way out is the fake uplink.
    await runCommand(["ip", "-batch", "-"], {
      input: [
        `rule add from ${hostAddressPool} lookup main suppress_prefixlength 0 priority ${priority}`,
        `rule add from ${hostAddressPool} lookup ${table} priority ${Number(priority) + 1}`,
        `route add 169.254.169.254/32 via ${net}.1 table ${table}`,
        `route add unreachable default table ${table}`,
        "",
      ].join("\n"),
    });
    writeFileSync(join(webRoot, "index.html"), "internet\n");
    for (const address of [`${net}.1`, `${net}.2`, "169.254.169.254"]) {
      processes.spawnIn(namespace, ["busybox", "httpd", "-f", "-p", `${address}:80`, "-h", webRoot]);
    }
    processes.spawnIn(namespace, [
      "dnsmasq",
      "--keep-in-foreground",
      "--conf-file=/dev/null",
      "--no-resolv",
      "--no-hosts",
      "--bind-interfaces",
      `--listen-address=${net}.53`,
      "--pid-file=",
      "--user=root",
      `--host-record=web.sbx.test,${net}.1`,
    ]);
    for (const address of [`${net}.1`, `${net}.2`, "169.254.169.254"]) {
      await waitForListener(namespace, address, 80, "tcp");
    }
    await waitForListener(namespace, `${net}.53`, 53, "udp");
  } catch (error) {
    await close();
    throw error;
  }
  return {
    namespace,
    hostVeth,
    hostAddress: `${net}.254`,
    web: `${net}.1`,
    other: `${net}.2`,
    resolver: `${net}.53`,
    webName: "web.sbx.test",
    metadata: "169.254.169.254",
    hostAddressPool,
    close,
  };
}

export interface FakeGuest {
  namespace: string;
  /** Runs a command as the guest. */
  exec(argv: string[], timeoutMs?: number): Promise<{ ok: boolean; stdout: string; stderr: string }>;
  /** Serves `text` over HTTP on the guest address. */
  serve(port: number, text: string): Promise<void>;
  close(): Promise<void>;
}

/**
 * Replaces the sandbox namespace's TAP with a veth of the same name and address whose peer is the
 * "guest": a namespace with the guest address and the TAP address as its gateway, like a booted VM.
 */
export async function attachFakeGuest(options: {
  sandboxNamespace: string;
  tapName: string;
  tapAddress: string;
  guestAddress: string;
}): Promise<FakeGuest> {
  const namespace = `${options.sandboxNamespace}-g`;
  const processes = new ProcessGroup();
  const roots: string[] = [];
  const prefix = options.tapAddress.split("/")[1];
  const gateway = options.tapAddress.split("/")[0];
  await runCommand(["ip", "netns", "add", namespace]);
  try {
    await runCommand(["ip", "-n", options.sandboxNamespace, "link", "del", options.tapName]);
    await runCommand([
      "ip",
      "-n",
      options.sandboxNamespace,
      "link",
      "add",
      options.tapName,
      "type",
      "veth",
      "peer",
      "name",
      "eth0",
      "netns",
      namespace,
    ]);
    await runCommand(["ip", "-n", options.sandboxNamespace, "-batch", "-"], {
      input: `addr add ${options.tapAddress} dev ${options.tapName}\nlink set ${options.tapName} up\n`,
    });
    await runCommand(["ip", "-n", namespace, "-batch", "-"], {
      input: `link set lo up\naddr add ${options.guestAddress}/${prefix} dev eth0\nlink set eth0 up\nroute add default via ${gateway}\n`,
    });
  } catch (error) {
    await runCommand(["ip", "netns", "del", namespace]).catch(() => undefined);
    throw error;
  }
  return {
    namespace,
    async exec(argv, timeoutMs = 10_000) {
      try {
        const { stdout, stderr } = await runCommand(["ip", "netns", "exec", namespace, ...argv], {
          timeoutMs,
        });
        return { ok: true, stdout, stderr };
      } catch (error) {
        const details = (error as { details?: { stdout?: string; stderr?: string } }).details ?? {};
        return { ok: false, stdout: details.stdout ?? "", stderr: details.stderr ?? "" };
      }
    },
    async serve(port, text) {
      const root = mkdtempSync(join(tmpdir(), "sbx-fake-guest-"));
      roots.push(root);
      writeFileSync(join(root, "index.html"), text);
      processes.spawnIn(namespace, [
        "busybox",
        "httpd",
        "-f",
        "-p",
        `${options.guestAddress}:${port}`,
        "-h",
        root,
      ]);
      await waitForListener(namespace, options.guestAddress, port, "tcp");
    },
    async close() {
      await processes.stop();
      for (const root of roots) rmSync(root, { recursive: true, force: true });
      await runCommand(["ip", "netns", "del", namespace]).catch(() => undefined);
    },
  };
}

/** curl from the guest (busybox 1.35's `wget -T` segfaults): the body, or undefined when it fails. */
export async function guestFetch(guest: FakeGuest, url: string): Promise<string | undefined> {
  const result = await guest.exec(curl(url), 15_000);
  return result.ok ? result.stdout : undefined;
}

export function curl(url: string): string[] {
  return ["curl", "-sf", "--max-time", "3", url];
}
