import { spawn } from "node:child_process";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { AddressPool } from "./address-pool.ts";
import { CONFIG_DEFAULTS } from "./config.ts";
import { runCommand } from "./exec.ts";
import {
  createNetworkNamespace,
  listLinks,
  listNetworkNamespaces,
  listTaggedLinks,
  teardownNetworkNamespace,
} from "./network.ts";
import {
  currentOwnerProcess,
  formatOwnerTag,
  type NetworkOwnerTag,
  ownerState,
  parseOwnerTag,
} from "./network-owner.ts";
import { deleteHostFirewall, listHostFirewall } from "./nftables.ts";
import { checkOrphanedNetworks, reclaimOrphanedNetworks } from "./orphaned-networks.ts";
import { processIdentity } from "./process-identity.ts";
import {
  childPids,
  hasCommand,
  networkSkipReason,
  openFdCount,
  spawnOwnerChild,
  testAddressIndex,
} from "./test-capabilities.ts";

const CHILD = join(import.meta.dirname, "test-network-owner-child.ts");

const tag: NetworkOwnerTag = {
  pid: 4242,
  startTime: "123456",
  pidNamespace: "4026531836",
  namespace: "sbx-0123abcd",
  firewallTable: "sbx",
};

/** A process that has run and exited: its identity now names nobody. */
async function deadProcess(): Promise<{ pid: number; startTime: string }> {
  const child = spawn("sleep", ["60"], { stdio: "ignore" });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  let identity = await processIdentity(child.pid as number);
  while (!identity) identity = await processIdentity(child.pid as number);
  child.kill("SIGKILL");
  await exited;
  return { pid: identity.pid, startTime: identity.startTime };
}

describe("owner tags", () => {
  it("round-trip through the alias format, and fit an interface alias", () => {
    const alias = formatOwnerTag(tag);
    expect(alias).toBe("sbx-owner/1;pid=4242;start=123456;pidns=4026531836;netns=sbx-0123abcd;table=sbx");
    expect(alias).not.toMatch(/\s/);
    expect(parseOwnerTag(alias)).toEqual(tag);
    const { firewallTable: _, ...withoutTable } = tag;
    expect(parseOwnerTag(formatOwnerTag(withoutTable))).toEqual(withoutTable);
  });

  it("refuses to write a tag that would not read back", () => {
    expect(() => formatOwnerTag({ ...tag, namespace: "a b" })).toThrow();
    expect(() => formatOwnerTag({ ...tag, firewallTable: "1table" })).toThrow();
    expect(() => formatOwnerTag({ ...tag, pid: 0 })).toThrow();
  });

  it.each([
    ["no alias", undefined],
    ["someone else's alias", "uplink to rack 7"],
    ["another version", formatOwnerTag(tag).replace("sbx-owner/1", "sbx-owner/2")],
    ["a missing field", "sbx-owner/1;pid=4242;start=1;pidns=2"],
    ["an unknown field", `${formatOwnerTag(tag)};extra=1`],
    ["a field twice", `${formatOwnerTag(tag)};pid=1`],
    ["a field without a value", "sbx-owner/1;pid;start=1;pidns=2;netns=x"],
    ["a namespace that escapes", "sbx-owner/1;pid=1;start=1;pidns=2;netns=../../etc"],
    ["a table nft would not take", "sbx-owner/1;pid=1;start=1;pidns=2;netns=x;table=a-b"],
    ["a negative pid", "sbx-owner/1;pid=-1;start=1;pidns=2;netns=x"],
    ["a non-numeric start", "sbx-owner/1;pid=1;start=1e3;pidns=2;netns=x"],
    ["an alias over 255 bytes", `sbx-owner/1;pid=1;start=1;pidns=2;netns=${"x".repeat(250)}`],
  ])("reads no tag from %s", (_, alias) => {
    expect(parseOwnerTag(alias)).toBeUndefined();
  });

  it("says a running owner is alive, an exited one gone, and one of another pid namespace unknown", async () => {
    const self = await currentOwnerProcess();
    expect(self.pid).toBe(process.pid);
    expect(await ownerState(self)).toBe("alive");
    const dead = await deadProcess();
    expect(await ownerState({ ...dead, pidNamespace: self.pidNamespace })).toBe("gone");
    // The same pid with another start time is a reused pid, not the owner.
    expect(await ownerState({ ...self, startTime: String(Number(self.startTime) + 1) })).toBe("gone");
    expect(await ownerState({ ...self, pidNamespace: "1" })).toBe("unknown");
  });
});

const skip = networkSkipReason() ?? (hasCommand("nft", ["--version"]) ? undefined : "needs nftables (nft)");
if (skip) console.log(`orphaned network tests skipped: ${skip}`);

describe.skipIf(skip)(`networks whose owner is gone${skip ? ` (skipped: ${skip})` : ""}`, () => {
  const pool = new AddressPool(CONFIG_DEFAULTS.hostAddressPool);
  const table = `sbxorphan${process.pid}`;
  const names = (suffix: string) => ({
    name: `sbxt${process.pid}-o${suffix}`,
    hostVethName: `so${process.pid}${suffix}`.slice(0, 15),
  });
  const cleanups: (() => Promise<unknown>)[] = [];
  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    await deleteHostFirewall(table).catch(() => undefined);
  });
  /** Ours only: other tests on this host create namespaces and links at the same time. */
  const ours = (list: string[]) => list.filter((name) => name.includes(String(process.pid))).sort();

  it("removes a killed owner's namespace, veth and rules, and leaves live, mismatched and untagged links alone", async () => {
    const before = {
      namespaces: ours(await listNetworkNamespaces()),
      links: ours(await listLinks()),
      fds: openFdCount(),
      children: childPids(),
    };

    // A crashed owner: a process that created a sandbox network with host rules, then was SIGKILLed.
    const crashed = names("c");
    const owner = spawnOwnerChild(CHILD, [
      crashed.name,
      crashed.hostVethName,
      table,
      String(testAddressIndex(40)),
    ]);
    const child = owner.child;
    cleanups.push(() => teardownNetworkNamespace(crashed));
    expect(JSON.parse(await owner.firstLine(30_000))).toEqual(crashed);
    child.kill("SIGKILL");
    await owner.exited;
    expect(await listNetworkNamespaces()).toContain(crashed.name);
    expect((await listHostFirewall(table)).sandboxChains).toContain(crashed.hostVethName);
    const crashedTag = (await listTaggedLinks()).find((link) => link.hostVethName === crashed.hostVethName);
    expect(crashedTag).toMatchObject({
      tag: { pid: child.pid, namespace: crashed.name, firewallTable: table },
      peerInTaggedNamespace: true,
    });

    // A live owner: this process.
    const live = names("l");
    const liveNetwork = await createNetworkNamespace({
      ...live,
      addresses: pool.addressesFor(testAddressIndex(41)),
      tapName: CONFIG_DEFAULTS.tapName,
      tapAddress: CONFIG_DEFAULTS.tapAddress,
      guestAddress: CONFIG_DEFAULTS.guestAddress,
      nat: false,
    });
    cleanups.push(() => liveNetwork.teardown());

    // A dead owner's tag on a veth whose peer is not in the namespace the tag names; and no tag at all.
    const self = await currentOwnerProcess();
    const dead = await deadProcess();
    const forged = names("f");
    const untagged = names("u");
    for (const link of [forged, untagged]) {
      await runCommand([
        "ip",
        "link",
        "add",
        link.hostVethName,
        "type",
        "veth",
        "peer",
        "name",
        `${link.hostVethName}p`,
      ]);
      cleanups.push(() => runCommand(["ip", "link", "del", link.hostVethName]));
    }
    const forgedTag = formatOwnerTag({ ...dead, pidNamespace: self.pidNamespace, namespace: crashed.name });
    await runCommand(["ip", "link", "set", "dev", forged.hostVethName, "alias", forgedTag]);

    // What `sbx doctor` says first: it only looks.
    const doctor = await checkOrphanedNetworks();
    expect(doctor.status).toBe("warn");
    expect(doctor.summary).toContain(`${crashed.name} (${crashed.hostVethName}, owner pid ${child.pid})`);
    expect(doctor.summary).toContain(`${forged.hostVethName} names ${crashed.name}`);
    expect(doctor.summary).not.toContain(live.name);
    expect(await listNetworkNamespaces()).toContain(crashed.name);

    const report = await reclaimOrphanedNetworks();

    expect(report.removed).toContainEqual({
      name: crashed.name,
      hostVethName: crashed.hostVethName,
      ownerPid: child.pid,
      removedLink: true,
      removedNamespace: true,
    });
    expect(report.removed.map((network) => network.name)).not.toContain(live.name);
    expect(report.mismatched).toContain(forged.hostVethName);
    expect(report.sweptRules).toContainEqual(
      expect.objectContaining({ table, chains: [crashed.hostVethName] }),
    );
    const namespaces = await listNetworkNamespaces();
    expect(namespaces).not.toContain(crashed.name);
    expect(namespaces).toContain(live.name);
    const links = await listLinks();
    expect(links).not.toContain(crashed.hostVethName);
    for (const kept of [live, forged, untagged]) expect(links).toContain(kept.hostVethName);
    const firewall = await listHostFirewall(table);
    expect(firewall.sandboxChains).not.toContain(crashed.hostVethName);
    expect(firewall.egress).not.toContain(crashed.hostVethName);

    // A second pass finds nothing more of ours; the doctor still shows the mismatched tag, for a person.
    const again = await reclaimOrphanedNetworks();
    expect(ours(again.removed.map((network) => network.name))).toEqual([]);
    const after = await checkOrphanedNetworks();
    expect(after.summary).not.toContain(`${crashed.name} (${crashed.hostVethName}`);
    expect(after.summary).toContain(forged.hostVethName);

    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    await deleteHostFirewall(table);
    expect(ours(await listNetworkNamespaces())).toEqual(before.namespaces);
    expect(ours(await listLinks())).toEqual(before.links);
    expect(childPids()).toEqual(before.children);
    expect(openFdCount()).toBe(before.fds);
  }, 60_000);
});
