import { afterAll, describe, expect, it } from "vitest";
import { runCommand } from "./exec.ts";
import { listHostAddresses, listLinks } from "./network.ts";
import {
  addPublishedPort,
  applySandboxRules,
  deleteHostFirewall,
  ensureHostFirewall,
  hostVethOfChain,
  listHostFirewall,
  removePublishedPort,
  removeSandboxRules,
  sandboxChainName,
  sweepOrphanedRules,
} from "./nftables.ts";
import { fakeInternetSkipReason } from "./test-network-fixture.ts";

const skip = fakeInternetSkipReason();
const table = `sbxn${process.pid}`;

const hostTable = `sbxh${process.pid}`;

async function listTable(name: string): Promise<string> {
  return (await runCommand(["nft", "list", "table", "inet", name])).stdout;
}

describe("sandbox chain names", () => {
  it("map interface names to nft chain names one-to-one", () => {
    for (const name of ["sbx0123456789ab", "st1234n0", "a-b.c_d", "x_2dy"]) {
      const chain = sandboxChainName(name);
      expect(chain).toMatch(/^[A-Za-z0-9_]+$/);
      expect(hostVethOfChain(chain)).toBe(name);
    }
    expect(sandboxChainName("a-b")).not.toBe(sandboxChainName("a_2db"));
    expect(() => sandboxChainName('x" }; flush ruleset')).toThrow(/interface name/);
  });
});

describe.skipIf(skip)(`host firewall${skip ? ` (skipped: ${skip})` : ""}`, () => {
  afterAll(async () => {
    await deleteHostFirewall(table);
    await runCommand(["nft", "delete", "table", "inet", hostTable]).catch(() => undefined);
  });

  it("adds and removes exactly one sandbox's rules, leaving other sandboxes and other tables alone", async () => {
    // Stands in for the host's own firewall, which sbx must never touch.
    await runCommand(["nft", "-f", "-"], {
      input: `table inet ${hostTable} {\n chain input { type filter hook input priority 10; policy accept; tcp dport 22 accept; }\n}\n`,
    });
    const host = await listTable(hostTable);
    await ensureHostFirewall(table);
    await ensureHostFirewall(table);
    const empty = await listHostFirewall(table);
    expect(empty).toEqual({ sandboxChains: [], egress: [], published: [], sandboxRules: 0 });

    await applySandboxRules(table, "sbxa", ["ip saddr != 10.9.0.2 drop", "accept"]);
    await applySandboxRules(table, "sbx-b", ["ip saddr != 10.9.0.6 drop", "accept"]);
    await addPublishedPort(table, { hostPort: 45_001, address: "10.9.0.2", port: 80 });
    await addPublishedPort(table, { hostPort: 45_002, address: "10.9.0.6", port: 80 });
    // Replacing is atomic and does not accumulate.
    await applySandboxRules(table, "sbxa", ["ip saddr != 10.9.0.2 drop", "ct state invalid drop", "accept"]);
    expect(await listHostFirewall(table)).toMatchObject({
      sandboxChains: ["sbxa", "sbx-b"],
      egress: expect.arrayContaining(["sbxa", "sbx-b"]),
      sandboxRules: 5,
    });
    // A port another sandbox holds is refused, whole.
    await expect(
      addPublishedPort(table, { hostPort: 45_001, address: "10.9.0.6", port: 81 }),
    ).rejects.toMatchObject({
      code: "NETWORK_SETUP_FAILED",
      message: expect.stringMatching(/already published/),
    });
    // Removing with a stale port (now another's) removes nothing of the other's.
    expect(
      await removeSandboxRules(table, "sbxa", [
        { hostPort: 45_001, address: "10.9.0.2", port: 80 },
        { hostPort: 45_002, address: "10.9.0.2", port: 80 },
      ]),
    ).toBe(true);
    const after = await listHostFirewall(table);
    expect(after).toEqual({
      sandboxChains: ["sbx-b"],
      egress: ["sbx-b"],
      published: [{ hostPort: 45_002, address: "10.9.0.6", port: 80 }],
      sandboxRules: 2,
    });
    // Twice is fine; a rule that does not parse changes nothing.
    expect(await removeSandboxRules(table, "sbxa")).toBe(true);
    const before = await listTable(table);
    await expect(applySandboxRules(table, "sbxc", ["accept", "not a rule"])).rejects.toMatchObject({
      code: "NETWORK_SETUP_FAILED",
    });
    expect(await listTable(table)).toBe(before);

    await removePublishedPort(table, { hostPort: 45_002, address: "10.9.0.6", port: 80 });
    await removePublishedPort(table, { hostPort: 45_002, address: "10.9.0.6", port: 80 });
    await removeSandboxRules(table, "sbx-b");
    expect(await listHostFirewall(table)).toEqual({
      sandboxChains: [],
      egress: [],
      published: [],
      sandboxRules: 0,
    });
    expect(await listTable(hostTable)).toBe(host);

    expect(await deleteHostFirewall(table)).toBe(true);
    expect(await removeSandboxRules(table, "sbxa")).toBe(false);
    expect(await deleteHostFirewall(table)).toBe(false);
  });

  it("sweeps rules and published ports whose sandbox is gone, and keeps those of live ones", async () => {
    const live = `st${process.pid}k`.slice(0, 15);
    // No dummy driver in every kernel; a veth pair is everywhere sbx runs.
    await runCommand([
      "ip",
      "link",
      "add",
      live,
      "type",
      "veth",
      "peer",
      "name",
      `st${process.pid}q`.slice(0, 15),
    ]);
    try {
      await runCommand(["ip", "addr", "add", "10.9.1.5/30", "dev", live]);
      await ensureHostFirewall(table);
      await applySandboxRules(table, live, ["accept"]);
      await applySandboxRules(table, "sbxgone", ["accept"]);
      await addPublishedPort(table, { hostPort: 45_010, address: "10.9.1.6", port: 80 });
      await addPublishedPort(table, { hostPort: 45_011, address: "10.9.1.10", port: 80 });
      const swept = await sweepOrphanedRules(table, async () => ({
        links: await listLinks(),
        addresses: await listHostAddresses(),
      }));
      expect(swept).toEqual({
        chains: ["sbxgone"],
        published: [{ hostPort: 45_011, address: "10.9.1.10", port: 80 }],
      });
      expect(await listHostFirewall(table)).toEqual({
        sandboxChains: [live],
        egress: [live],
        published: [{ hostPort: 45_010, address: "10.9.1.6", port: 80 }],
        sandboxRules: 1,
      });
      await removeSandboxRules(table, live, [{ hostPort: 45_010, address: "10.9.1.6", port: 80 }]);
    } finally {
      await runCommand(["ip", "link", "del", live]);
    }
  });
});
