import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AddressPool } from "./address-pool.ts";
import { createConfig, type OrchestratorConfig } from "./config.ts";
import { parseEgressPolicy } from "./egress-policy.ts";
import {
  NETWORK_POOL_DIR,
  NETWORK_RECORD_FILE,
  type NetworkHost,
  NetworkPool,
  reclaimNetworkPool,
} from "./netns-pool.ts";
import { listLinks, listNetworkNamespaces } from "./network.ts";
import { deleteHostFirewall, listHostFirewall } from "./nftables.ts";
import { openOrchestratorState } from "./orchestrator-state.ts";
import { type ProcessIdentity, processIdentity } from "./process-identity.ts";
import { reclaim } from "./reclaim.ts";
import { networkStep, newSandboxCreateContext, stateRecordStep } from "./sandbox-steps.ts";
import { runSteps, StepList } from "./steps.ts";
import { childPids, openFdCount } from "./test-capabilities.ts";
import { fakeInternetSkipReason, testSlot } from "./test-network-fixture.ts";

const skip = fakeInternetSkipReason();
if (skip) console.log(`network pool tests skipped: ${skip}`);

const slot = testSlot(2);
const table = `sbxp${process.pid}`;
const prefix = `sp${process.pid % 100_000}`;
let root: string;
let config: OrchestratorConfig;

async function host(owner?: ProcessIdentity): Promise<NetworkHost> {
  const self = owner ?? (await processIdentity(process.pid));
  if (!self) throw new Error("no identity");
  return { config, stateDir: { root }, self, addressPool: new AddressPool(config.hostAddressPool) };
}

async function deadOwner(): Promise<ProcessIdentity> {
  const child = spawn("true", [], { stdio: "ignore" });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  await new Promise((resolve) => child.once("spawn", resolve));
  const identity = (await processIdentity(child.pid as number)) ?? {
    pid: child.pid as number,
    startTime: "1",
    cmdline: ["true"],
  };
  await exited;
  return identity;
}

/** What exists of ours: namespaces and host links with our prefix, and the test table's contents. */
async function leftovers() {
  const mine = (names: string[]) => names.filter((n) => n.startsWith(prefix)).sort();
  const firewall = await listHostFirewall(table);
  return {
    namespaces: mine(await listNetworkNamespaces()),
    links: mine(await listLinks()),
    // A TAP in the host namespace would mean one escaped its sandbox namespace.
    hostTaps: (await listLinks()).filter((n) => n === config.tapName),
    chains: firewall.sandboxChains,
    egress: firewall.egress,
    rules: firewall.sandboxRules,
  };
}

const NOTHING = { namespaces: [], links: [], hostTaps: [], chains: [], egress: [], rules: 0 };

describe.skipIf(skip)(`network pool${skip ? ` (skipped: ${skip})` : ""}`, () => {
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "sbx-netns-pool-"));
    config = createConfig({
      stateDir: root,
      hostAddressPool: `10.202.${slot}.0/24`,
      firewallTable: table,
      // Never used for traffic here; given so the host's resolv.conf does not matter.
      dnsServers: ["198.18.255.53"],
      networkPoolSize: 2,
    });
  });

  afterAll(async () => {
    await deleteHostFirewall(table);
    await rm(root, { recursive: true, force: true });
  });

  it("hands out prepared networks, records them until claimed, refills, and leaves nothing on close", async () => {
    const fds = openFdCount();
    const children = childPids().length;
    const pool = new NetworkPool(await host(), { namePrefix: prefix });
    await pool.filled();
    expect(pool.stats).toMatchObject({ ready: 2, preparing: 0, hits: 0, misses: 0, failures: 0 });
    expect((await readdir(join(root, NETWORK_POOL_DIR))).sort()).toHaveLength(2);
    expect((await leftovers()).chains).toHaveLength(2);

    let recordedWhileClaiming = false;
    const taken = await pool.take({
      claim: async (network) => {
        recordedWhileClaiming = existsSync(join(root, NETWORK_POOL_DIR, `${network.name}.json`));
      },
    });
    expect(taken.fromPool).toBe(true);
    expect(recordedWhileClaiming).toBe(true);
    expect(existsSync(join(root, NETWORK_POOL_DIR, `${taken.network.name}.json`))).toBe(false);
    expect(taken.network.policy.default).toBe("allow");

    // A non-default policy costs one transaction on this network's chain, nothing else.
    const second = await pool.take({ policy: parseEgressPolicy({ default: "deny" }) });
    expect(second.network.policy.default).toBe("deny");
    await pool.filled();
    expect(pool.stats).toMatchObject({ ready: 2, hits: 2 });

    await pool.release(taken.network);
    await pool.release(second.network);
    await pool.close();
    expect(await leftovers()).toEqual(NOTHING);
    expect(await readdir(join(root, NETWORK_POOL_DIR))).toEqual([]);
    expect(openFdCount()).toBe(fds);
    expect(childPids()).toHaveLength(children);
  });

  it("creates on the spot when empty, and tears a network down when claiming it fails", async () => {
    const pool = new NetworkPool(await host(), { size: 0, namePrefix: prefix });
    const taken = await pool.take();
    expect(taken.fromPool).toBe(false);
    expect(pool.stats.misses).toBe(1);
    await pool.release(taken.network);
    await expect(
      pool.take({
        claim: async () => {
          throw new Error("state directory full");
        },
      }),
    ).rejects.toThrow(/state directory full/);
    await pool.close();
    expect(await leftovers()).toEqual(NOTHING);
  });

  it("reclaims what a crashed run's pool prepared, and leaves a live owner's alone", async () => {
    const crashed = new NetworkPool(await host(await deadOwner()), { namePrefix: prefix });
    await crashed.filled();
    const live = new NetworkPool(await host(), { size: 1, namePrefix: prefix });
    await live.filled();
    expect((await leftovers()).namespaces).toHaveLength(3);

    const reclaimed = await reclaimNetworkPool(root);
    expect(reclaimed).toHaveLength(2);
    expect(reclaimed.every((r) => r.removedRules && r.removedLink && r.removedNamespace && !r.error)).toBe(
      true,
    );
    const after = await leftovers();
    expect(after.namespaces).toHaveLength(1);
    expect(after.chains).toHaveLength(1);
    expect(await readdir(join(root, NETWORK_POOL_DIR))).toHaveLength(1);

    await live.close();
    expect(await leftovers()).toEqual(NOTHING);
  });

  it("reclaims a pooled network that a crash caught after the hand-over, from the sandbox's directory", async () => {
    const state = await openOrchestratorState(config);
    const pool = new NetworkPool(state, { size: 1, namePrefix: prefix });
    try {
      await pool.filled();
      // The sandbox's owner is a process that is gone: a crashed orchestrator.
      const context = newSandboxCreateContext({ ...state, self: await deadOwner() });
      await stateRecordStep().run(context, { signal: new AbortController().signal });
      await networkStep({ pool }).run(context, { signal: new AbortController().signal });
      const name = context.sandboxNetwork?.name as string;
      expect(existsSync(join(root, "sandboxes", context.sandboxId, NETWORK_RECORD_FILE))).toBe(true);
      expect(existsSync(join(root, NETWORK_POOL_DIR, `${name}.json`))).toBe(false);
      expect(await listNetworkNamespaces()).toContain(name);

      const report = await reclaim(state.stateDir, {
        firewallTable: table,
        hostAddressPool: config.addresses.hostAddressPool,
      });
      expect(report.reclaimed.map((r) => r.network)).toEqual([
        { name, removedRules: true, removedLink: true, removedNamespace: true },
      ]);
      expect(await listNetworkNamespaces()).not.toContain(name);
      expect((await leftovers()).chains).toHaveLength(1);
    } finally {
      await pool.close();
      await state.close();
    }
    expect(await leftovers()).toEqual(NOTHING);
  });

  it("leaves no rule, namespace, veth or TAP behind after 50 create/kill cycles of the network step", async () => {
    const before = await leftovers();
    expect(before).toEqual(NOTHING);
    const state = await openOrchestratorState(config);
    const pool = new NetworkPool(state, { size: 2, namePrefix: prefix });
    const seen = new Set<string>();
    const seenVeths = new Set<string>();
    try {
      for (let cycle = 0; cycle < 50; cycle++) {
        const context = newSandboxCreateContext(state);
        // Half from the pool (as the Orchestrator hands it over), half created by the step itself.
        if (cycle % 2 === 0) context.networkPool = pool;
        const steps = new StepList([stateRecordStep(), networkStep()]);
        const result = await runSteps(steps, context);
        const network = context.sandboxNetwork;
        if (!network) throw new Error("the network step set no network");
        seen.add(network.name);
        seenVeths.add(network.hostVethName);
        expect(context.record?.networkNamespace?.name).toBe(network.name);
        await network.expose(8080, { publish: true });
        await result.cleanup();
      }
      expect(pool.stats.hits + pool.stats.misses).toBe(25);
      await pool.close();
    } finally {
      await state.close();
    }
    expect(seen.size).toBe(50);
    const namespaces = await listNetworkNamespaces();
    expect([...seen].filter((name) => namespaces.includes(name))).toEqual([]);
    const links = await listLinks();
    expect([...seenVeths].filter((name) => links.includes(name))).toEqual([]);
    const after = await leftovers();
    expect(after).toEqual(NOTHING);
    expect((await listHostFirewall(table)).published).toEqual([]);
  });
});
