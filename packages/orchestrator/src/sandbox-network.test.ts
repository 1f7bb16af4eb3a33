import { type ChildProcess, spawn } from "node:child_process";
import { createServer, type Server } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AddressPool } from "./address-pool.ts";
import { CONFIG_DEFAULTS } from "./config.ts";
import { parseEgressPolicy } from "./egress-policy.ts";
import { runCommand } from "./exec.ts";
import { listLinks, listNetworkNamespaces } from "./network.ts";
import { deleteHostFirewall, listHostFirewall } from "./nftables.ts";
import { SandboxNetwork } from "./sandbox-network.ts";
import { childPids } from "./test-capabilities.ts";
import {
  attachFakeGuest,
  createFakeInternet,
  curl,
  type FakeGuest,
  type FakeInternet,
  fakeInternetSkipReason,
  guestFetch,
  testSlot,
} from "./test-network-fixture.ts";

const skip = fakeInternetSkipReason();
if (skip) console.log(`sandbox network tests skipped: ${skip}`);

const slot = testSlot(1);
const table = `sbxt${process.pid}`;
let internet: FakeInternet;
let pool: AddressPool;
let hostServer: Server;
let hostPort: number;
const childrenBefore = childPids().length;

interface Sandbox {
  network: SandboxNetwork;
  guest: FakeGuest;
}
const open: Sandbox[] = [];

async function sandbox(index: number, policy?: unknown): Promise<Sandbox> {
  const network = await SandboxNetwork.create({
    name: `sbxt${process.pid}-${index}`,
    hostVethName: `st${process.pid}n${index}`.slice(0, 15),
    addresses: pool.addressesFor(index),
    tapName: CONFIG_DEFAULTS.tapName,
    tapAddress: CONFIG_DEFAULTS.tapAddress,
    guestAddress: CONFIG_DEFAULTS.guestAddress,
    hostAddressPool: pool.cidr,
    firewallTable: table,
    resolvers: [internet.resolver],
    publishPortRange: { from: 41_000 + slot * 8, to: 41_000 + slot * 8 + 7 },
    ...(policy === undefined ? {} : { policy: parseEgressPolicy(policy) }),
  });
  const guest = await attachFakeGuest({
    sandboxNamespace: network.name,
    tapName: CONFIG_DEFAULTS.tapName,
    tapAddress: CONFIG_DEFAULTS.tapAddress,
    guestAddress: CONFIG_DEFAULTS.guestAddress,
  });
  const entry = { network, guest };
  open.push(entry);
  return entry;
}

async function close(entry: Sandbox): Promise<void> {
  await entry.guest.close();
  await entry.network.teardown();
  open.splice(open.indexOf(entry), 1);
}

/** Our namespaces and links only: other test processes create theirs at the same time. */
function ours(names: string[]): string[] {
  return names.filter((n) => n.includes(String(process.pid))).sort();
}

describe.skipIf(skip)(`sandbox networks against a fake internet${skip ? ` (skipped: ${skip})` : ""}`, () => {
  let namespacesBefore: string[];
  let linksBefore: string[];

  beforeAll(async () => {
    namespacesBefore = ours(await listNetworkNamespaces());
    linksBefore = ours(await listLinks());
    internet = await createFakeInternet(slot);
    pool = new AddressPool(internet.hostAddressPool);
    // A service on every host address: sandboxes must not reach it by default.
    hostServer = createServer((_, response) => response.end("host\n"));
    await new Promise<void>((resolve) => hostServer.listen(0, "0.0.0.0", resolve));
    hostPort = (hostServer.address() as { port: number }).port;
  });

  afterAll(async () => {
    for (const entry of [...open]) await close(entry).catch(() => undefined);
    await new Promise((resolve) => hostServer?.close(resolve));
    await internet?.close();
    await deleteHostFirewall(table);
    expect(ours(await listNetworkNamespaces())).toEqual(namespacesBefore);
    expect(ours(await listLinks())).toEqual(linksBefore);
    expect(childPids().length).toBe(childrenBefore);
  });

  it("by default reaches the internet and its resolver, not the host, other sandboxes or 169.254.169.254", async () => {
    const a = await sandbox(0);
    const b = await sandbox(1);
    expect(await guestFetch(a.guest, `http://${internet.web}/`)).toBe("internet\n");
    expect(await guestFetch(a.guest, `http://${internet.other}/`)).toBe("internet\n");
    const lookup = await a.guest.exec(["busybox", "nslookup", internet.webName, internet.resolver]);
    expect(lookup.stdout).toContain(internet.web);
    // The host's own addresses: the fake uplink's, the sandbox's gateway on the veth.
    expect(await guestFetch(a.guest, `http://${internet.hostAddress}:${hostPort}/`)).toBeUndefined();
    expect(
      await guestFetch(a.guest, `http://${a.network.addresses.hostAddress}:${hostPort}/`),
    ).toBeUndefined();
    expect(await guestFetch(a.guest, `http://${internet.metadata}/`)).toBeUndefined();
    // Another sandbox's namespace address.
    await b.guest.serve(8080, "b\n");
    await b.network.expose(8080);
    expect(await guestFetch(a.guest, `http://${b.network.addresses.namespaceAddress}:8080/`)).toBeUndefined();
    // The host itself can reach the service it exposed.
    expect(await (await fetch(`http://${b.network.addresses.namespaceAddress}:8080/`)).text()).toBe("b\n");
    // And the host's service answers others (the rule refuses sandboxes, the service is up).
    expect(await (await fetch(`http://${internet.hostAddress}:${hostPort}/`)).text()).toBe("host\n");
    await close(a);
    await close(b);
  });

  it("applies deny-all with an allow list, and opens a default-denied address when listed", async () => {
    const s = await sandbox(2, {
      default: "deny",
      allow: [`${internet.web}:80/tcp`, `${internet.metadata}`],
    });
    expect(await guestFetch(s.guest, `http://${internet.web}/`)).toBe("internet\n");
    expect(await guestFetch(s.guest, `http://${internet.other}/`)).toBeUndefined();
    expect(await guestFetch(s.guest, `http://${internet.metadata}/`)).toBe("internet\n");
    // The resolver stays reachable under deny-all: names still resolve.
    const lookup = await s.guest.exec(["busybox", "nslookup", internet.webName, internet.resolver]);
    expect(lookup.stdout).toContain(internet.web);

    // Switching policy is one transaction on this sandbox's chain only.
    await s.network.applyEgressPolicy(parseEgressPolicy({ deny: [internet.web] }));
    expect(await guestFetch(s.guest, `http://${internet.web}/`)).toBeUndefined();
    expect(await guestFetch(s.guest, `http://${internet.other}/`)).toBe("internet\n");
    expect(await guestFetch(s.guest, `http://${internet.metadata}/`)).toBeUndefined();
    await close(s);
  });

  it("exposes a guest port of the right clone among three with the same guest address", async () => {
    const clones = [await sandbox(3), await sandbox(4), await sandbox(5)];
    const exposed = [];
    for (const [i, clone] of clones.entries()) {
      await clone.guest.serve(8080, `clone ${i}\n`);
      exposed.push(await clone.network.expose(8080, { publish: true }));
    }
    expect(new Set(exposed.map((e) => e.host)).size).toBe(3);
    expect(new Set(exposed.map((e) => e.hostPort)).size).toBe(3);
    for (const [i, port] of exposed.entries()) {
      expect(await (await fetch(`http://${port.host}:${port.port}/`)).text()).toBe(`clone ${i}\n`);
      // Published: a host address and port, from the host and from a machine on its uplink.
      expect(await (await fetch(`http://${internet.hostAddress}:${port.hostPort}/`)).text()).toBe(
        `clone ${i}\n`,
      );
      const remote = await runCommand([
        "ip",
        "netns",
        "exec",
        internet.namespace,
        ...curl(`http://${internet.hostAddress}:${port.hostPort}/`),
      ]);
      expect(remote.stdout).toBe(`clone ${i}\n`);
    }
    expect((await listHostFirewall(table)).published).toHaveLength(3);
    // Closing one exposure removes its published port only.
    await exposed[1]?.close();
    const published = (await listHostFirewall(table)).published.map((p) => p.hostPort).sort();
    expect(published).toEqual([exposed[0]?.hostPort, exposed[2]?.hostPort].sort());
    await expect(fetch(`http://${exposed[1]?.host}:8080/`)).rejects.toThrow();
    for (const clone of clones) await close(clone);
    expect(await listHostFirewall(table)).toEqual({
      sandboxChains: [],
      egress: [],
      published: [],
      sandboxRules: 0,
    });
  });

  it("refuses connections beyond maxConnections and shapes egress bandwidth", async () => {
    const s = await sandbox(6, { maxConnections: 2, egressBitsPerSecond: 8_000_000 });
    const holders: ChildProcess[] = [];
    try {
      for (let i = 0; i < 2; i++) {
        // Each holds a TCP connection open: httpd waits for a request that never comes.
        const child = spawn("ip", ["netns", "exec", s.guest.namespace, "busybox", "nc", internet.web, "80"], {
          stdio: ["pipe", "ignore", "ignore"],
        });
        holders.push(child);
      }
      const established = async () => {
        const { stdout } = await runCommand([
          "ip",
          "netns",
          "exec",
          s.guest.namespace,
          "ss",
          "-tnH",
          "state",
          "established",
        ]);
        return stdout.trim().split("\n").filter(Boolean).length;
      };
      for (let i = 0; i < 100 && (await established()) < 2; i++) await new Promise((r) => setTimeout(r, 50));
      expect(await established()).toBe(2);
      expect(await guestFetch(s.guest, `http://${internet.web}/`)).toBeUndefined();
    } finally {
      for (const child of holders) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGKILL");
        await exited;
      }
    }
    // The limit, not the server, refused it: with the two connections gone a new one goes through.
    let body: string | undefined;
    for (let i = 0; i < 50 && body === undefined; i++)
      body = await guestFetch(s.guest, `http://${internet.web}/`);
    expect(body).toBe("internet\n");
    const { stdout } = await runCommand(["tc", "-n", s.network.name, "-j", "qdisc", "show", "dev", "veth0"]);
    const [qdisc] = JSON.parse(stdout) as { kind: string; options: { rate: number } }[];
    expect(qdisc).toMatchObject({ kind: "tbf", options: { rate: 1_000_000 } });
    await close(s);
  });
});
