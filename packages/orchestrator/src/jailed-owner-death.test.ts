// The owner of three jailed sandboxes is SIGKILLed: its Firecrackers die with it (the jail's pid
// namespace dies with its init, which dies with its owner), and the next owner of the state directory
// removes their chroots and cgroups; no process, pid namespace, chroot, cgroup or uid is left.
import { readdirSync, readlinkSync, statSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { realFirecracker } from "@sbx/fc-client/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createConfig, type OrchestratorConfig } from "./config.ts";
import { importBuild } from "./import-build.ts";
import { jailLayout } from "./jail-plan.ts";
import { openOrchestratorState } from "./orchestrator-state.ts";
import { childPids, entries, processesInNamespace, spawnOwnerChild } from "./test-capabilities.ts";
import { snapshotTestGuest } from "./test-guest-snapshot.ts";

const fc = realFirecracker({ testGuest: true });
const skipReason = fc.skipReason ?? fc.jailerSkipReason;
if (skipReason) console.log(`[orchestrator] jailed owner-death test skipped: ${skipReason}`);

const CHILD = join(import.meta.dirname, "test-jailed-owner-child.ts");

function alive(pid: number): boolean {
  try {
    const stat = readdirSync(`/proc/${pid}/task`);
    return stat.length > 0;
  } catch {
    return false;
  }
}

async function until(condition: () => boolean, what: string, withinMs = 10_000): Promise<void> {
  const deadline = Date.now() + withinMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe.skipIf(skipReason !== undefined)(
  `a jailed owner SIGKILLed${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let dir: string;
    let config: OrchestratorConfig;
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "sbx-jail-owner-"));
      config = createConfig({
        stateDir: join(dir, "state"),
        firecrackerBin: fc.binary!,
        jailerBin: fc.jailer!,
      });
      const snapshot = await snapshotTestGuest(fc.binary!, join(dir, "t"));
      await using state = await openOrchestratorState(config);
      await importBuild(state, { template: "guest", ...snapshot });
    }, 60_000);
    afterAll(async () => {
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it("its three Firecrackers die with it; the next owner removes their chroots and cgroups", async () => {
      const children = childPids();
      const owner = spawnOwnerChild(CHILD, [config.stateDir, fc.binary!, fc.jailer!]);
      const child = owner.child;
      const line = await owner.firstLine(90_000);
      const owned = JSON.parse(line) as {
        pid: number;
        jail: { uid: number; directory: string; cgroups: string[] };
      }[];
      expect(owned).toHaveLength(3);
      const namespaces = owned.map((vm) => readlinkSync(`/proc/${vm.pid}/ns/pid`));
      expect(new Set(namespaces).size).toBe(3);
      for (const vm of owned) {
        expect(statSync(join(vm.jail.directory, "root")).isDirectory()).toBe(true);
        expect(vm.jail.cgroups.length).toBeGreaterThan(0);
      }

      child.kill("SIGKILL");
      await owner.exited;
      // The kernel does it, with nobody left to ask: every VM and its pid namespace go.
      await until(() => owned.every((vm) => !alive(vm.pid)), "the Firecrackers to die");
      await until(
        () => namespaces.every((ns) => processesInNamespace(ns).length === 0),
        "the pid namespaces to empty",
      );
      // Until the next owner comes, the jails are still there: nobody was left to remove them.
      expect(owned.every((vm) => entries(vm.jail.directory).length > 0)).toBe(true);

      await using state = await openOrchestratorState(config);
      expect(state.reclaimed.reclaimed.map((r) => r.jail?.directory).sort()).toEqual(
        owned.map((vm) => vm.jail.directory).sort(),
      );
      for (const vm of owned) {
        expect(entries(vm.jail.directory)).toEqual([]);
        for (const cgroup of vm.jail.cgroups) expect(() => statSync(cgroup)).toThrow();
      }
      const layout = jailLayout(config);
      expect(entries(join(layout.chrootBaseDir, "firecracker"))).toEqual([]);
      expect(state.uidPool.inUse).toBe(0);
      expect(entries(join(config.stateDir, "sandboxes"))).toEqual([]);
      expect(childPids()).toEqual(children);
    }, 180_000);
  },
);
