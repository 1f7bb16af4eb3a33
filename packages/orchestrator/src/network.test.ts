import { afterAll, describe, expect, it } from "vitest";
import { AddressPool } from "./address-pool.ts";
import { CONFIG_DEFAULTS } from "./config.ts";
import { runCommand } from "./exec.ts";
import {
  createNetworkNamespace,
  listLinks,
  listNetworkNamespaces,
  type NetworkNamespace,
  networkNamesFor,
  teardownNetworkNamespace,
} from "./network.ts";
import { networkSkipReason, testAddressIndex } from "./test-capabilities.ts";

const skip = networkSkipReason();
if (skip) console.log(`network namespace tests skipped: ${skip}`);

const pool = new AddressPool(CONFIG_DEFAULTS.hostAddressPool);
const created: NetworkNamespace[] = [];

function options(suffix: string, slot: number) {
  return {
    name: `sbxt${process.pid}-${suffix}`,
    hostVethName: `st${process.pid}${suffix}`,
    addresses: pool.addressesFor(testAddressIndex(slot)),
    tapName: CONFIG_DEFAULTS.tapName,
    tapAddress: CONFIG_DEFAULTS.tapAddress,
    guestAddress: CONFIG_DEFAULTS.guestAddress,
  };
}

/** Ours only: other engineers' tests may create namespaces and links on this host at the same time. */
function ours(names: string[]): string[] {
  return names.filter((n) => n.includes(String(process.pid)) || n === CONFIG_DEFAULTS.tapName).sort();
}

async function tapAddresses(namespace: string, tap: string): Promise<string[]> {
  const { stdout } = await runCommand(["ip", "-n", namespace, "-j", "addr", "show", "dev", tap]);
  const [entry] = JSON.parse(stdout) as {
    addr_info: { family: string; local: string; prefixlen: number }[];
  }[];
  return (entry?.addr_info ?? []).filter((a) => a.family === "inet").map((a) => `${a.local}/${a.prefixlen}`);
}

afterAll(async () => {
  for (const namespace of created) await namespace.teardown().catch(() => undefined);
});

describe.skipIf(skip)(`network namespaces${skip ? ` (skipped: ${skip})` : ""}`, () => {
  it("gives two sandboxes the same TAP and guest address, a reachable veth, and leaves nothing behind", async () => {
    const namespacesBefore = await listNetworkNamespaces();
    const linksBefore = await listLinks();

    const a = await createNetworkNamespace(options("a", 0));
    created.push(a);
    const b = await createNetworkNamespace(options("b", 1));
    created.push(b);

    expect(await listNetworkNamespaces()).toEqual(expect.arrayContaining([a.name, b.name]));
    for (const namespace of [a, b]) {
      expect(await listLinks(namespace.name)).toEqual(
        expect.arrayContaining(["lo", "veth0", CONFIG_DEFAULTS.tapName]),
      );
      expect(await tapAddresses(namespace.name, CONFIG_DEFAULTS.tapName)).toEqual([
        CONFIG_DEFAULTS.tapAddress,
      ]);
      expect(namespace.guestAddress).toBe(CONFIG_DEFAULTS.guestAddress);
      // The TAP exists only inside the namespace.
      expect(await listLinks()).not.toContain(CONFIG_DEFAULTS.tapName);
      expect(await listLinks()).toContain(namespace.hostVethName);
      // From inside the namespace, across the veth pair, to the host end.
      const ping = await namespace.exec(
        ["busybox", "ping", "-c", "1", "-W", "2", namespace.addresses.hostAddress],
        { timeoutMs: 10_000 },
      );
      expect(ping.stdout).toMatch(/1 packets received/);
    }
    expect(a.addresses.hostAddress).not.toBe(b.addresses.hostAddress);

    await a.teardown();
    await b[Symbol.asyncDispose]();
    expect(a.isTornDown).toBe(true);
    // Twice is fine.
    await a.teardown();
    expect(await teardownNetworkNamespace(b.ref)).toEqual({ removedLink: false, removedNamespace: false });

    expect(ours(await listNetworkNamespaces())).toEqual(ours(namespacesBefore));
    expect(ours(await listLinks())).toEqual(ours(linksBefore));
  });

  it("refuses to take over an existing namespace and leaves it alone", async () => {
    const first = await createNetworkNamespace(options("c", 2));
    created.push(first);
    const linksBefore = await listLinks();
    const error = await createNetworkNamespace({
      ...options("c", 3),
      hostVethName: `st${process.pid}d`,
    }).catch((e) => e);
    expect(error.code).toBe("NETWORK_SETUP_FAILED");
    expect(error.message).toMatch(/already exists/);
    expect(await listNetworkNamespaces()).toContain(first.name);
    expect(ours(await listLinks())).toEqual(ours(linksBefore));
    await first.teardown();
  });

  it("removes what it created when a later command fails", async () => {
    const namespacesBefore = await listNetworkNamespaces();
    const linksBefore = await listLinks();
    const error = await createNetworkNamespace({ ...options("e", 4), tapAddress: "not-an-address" }).catch(
      (e) => e,
    );
    expect(error.code).toBe("NETWORK_SETUP_FAILED");
    expect(ours(await listNetworkNamespaces())).toEqual(ours(namespacesBefore));
    expect(ours(await listLinks())).toEqual(ours(linksBefore));
  });

  it("forwards and masquerades in the namespace by default, and not with nat: false", async () => {
    const tables = async (name: string) =>
      (await runCommand(["ip", "netns", "exec", name, "nft", "list", "tables"])).stdout.trim();
    const forwarding = async (name: string) =>
      (await runCommand(["ip", "netns", "exec", name, "cat", "/proc/sys/net/ipv4/ip_forward"])).stdout.trim();
    const withNat = await createNetworkNamespace(options("g", 6));
    created.push(withNat);
    const without = await createNetworkNamespace({ ...options("h", 7), nat: false });
    created.push(without);
    expect(await tables(withNat.name)).toBe("table ip sbx");
    expect(await forwarding(withNat.name)).toBe("1");
    // (Its forwarding flag is inherited from the host's at creation: net.core.devconf_inherit_init_net.)
    expect(await tables(without.name)).toBe("");
    await withNat.teardown();
    await without.teardown();
  });

  it("rejects interface names Linux would refuse", async () => {
    await expect(
      createNetworkNamespace({ ...options("f", 5), hostVethName: "a-name-that-is-too-long" }),
    ).rejects.toMatchObject({ code: "INVALID_OPTIONS" });
  });
});

describe("networkNamesFor", () => {
  it("derives a namespace name and a 15-character host veth name from the id", () => {
    const names = networkNamesFor("a1b2c3d4e5f6");
    expect(names.name).toBe("sbx-a1b2c3d4e5f6");
    expect(names.hostVethName).toMatch(/^sbx[0-9a-f]{12}$/);
    expect(networkNamesFor("a1b2c3d4e5f7").hostVethName).not.toBe(names.hostVethName);
    expect(networkNamesFor("x".repeat(48)).hostVethName).toHaveLength(15);
  });
});
