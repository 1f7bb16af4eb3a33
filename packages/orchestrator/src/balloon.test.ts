// The balloon template option: the request's default, the VM description Firecracker gets, and with a
// real Firecracker a build whose snapshot carries the balloon and whose sandboxes resume with it. The
// test guest's balloon driver (sbx.balloon-scratch-mib) then frees memory for real: it dirties a scratch
// region while the balloon's target is 0 and reports it free once the host raises the target, so a
// sandbox restored through the page-fault server shows the REMOVE events, the reclaimed bytes and a
// Firecracker that holds that much less.
import { readdirSync } from "node:fs";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildTestGuest, realFirecracker, TEST_GUEST_READY_MARKER } from "@sbx/fc-client/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createConfig } from "./config.ts";
import { recordedSandboxesMemory, type SandboxMemoryStats, sandboxesMemoryStats } from "./memory-stats.ts";
import { Orchestrator } from "./orchestrator.ts";
import { StateDirectory } from "./state-dir.ts";
import { type TemplateBuildContext, templateVmConfig } from "./template-build.ts";
import { parseTemplateRequest } from "./template-inputs.ts";
import type { BootParameters } from "./template-manifest.ts";
import { childPids } from "./test-capabilities.ts";
import { expectChecksumContinues, lastIteration } from "./test-guest-snapshot.ts";
import { type TemplateFixture, templateFixture, testResolver } from "./test-template-fixture.ts";

const MiB = 1024 * 1024;
const fdCount = () => readdirSync("/proc/self/fd").length;
/** The scratch the test guest dirties and then reports free: above its walked region, inside 128 MiB. */
const SCRATCH_MIB = 48;
/** The driver reports in 4 MiB descriptors; Firecracker discards each with one madvise, one REMOVE. */
const REPORT_CHUNK = 4 * MiB;

function contextWith(boot: Partial<BootParameters>): TemplateBuildContext {
  return {
    config: createConfig({ stateDir: "/var/lib/sbx-test-never-created" }),
    inputs: {
      boot: {
        kernel: { path: "/k", sha256: "0".repeat(64) },
        vcpuCount: 1,
        memoryMib: 128,
        smt: false,
        hugePages: "None",
        cpuTemplate: { kind: "none" },
        ...boot,
      },
    },
  } as unknown as TemplateBuildContext;
}

describe("balloon template option", () => {
  it("a request's balloon defaults to free page reporting without statistics", () => {
    expect(parseTemplateRequest({ name: "b", ociLayout: "/l", balloon: {} }).balloon).toEqual({
      freePageReporting: true,
      statsPollingIntervalS: 0,
    });
    expect(parseTemplateRequest({ name: "b", ociLayout: "/l" }).balloon).toBeUndefined();
    expect(() =>
      parseTemplateRequest({ name: "b", ociLayout: "/l", balloon: { statsPollingIntervalS: -1 } }),
    ).toThrow(/statsPollingIntervalS/);
  });

  it("Firecracker gets a deflated balloon with free page reporting, and none without the option", () => {
    const config = templateVmConfig(
      contextWith({ balloon: { freePageReporting: true, statsPollingIntervalS: 5 } }),
      "console=ttyS0",
    );
    expect(config.balloon).toEqual({
      amount_mib: 0,
      deflate_on_oom: true,
      free_page_reporting: true,
      stats_polling_interval_s: 5,
    });
    expect(templateVmConfig(contextWith({}), "console=ttyS0").balloon).toBeUndefined();
  });
});

const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker({ testGuest: true });
const skipReason =
  firecrackerSkip ?? (process.getuid?.() === 0 ? undefined : "needs root for the VMs' mount namespaces");
if (skipReason) console.log(`[orchestrator] balloon test with Firecracker skipped: ${skipReason}`);

describe.skipIf(skipReason !== undefined)(
  `a template with a balloon, with Firecracker${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let fixture: TemplateFixture;
    let orchestrator: Orchestrator;
    let before: { fds: number; children: number[] };

    beforeAll(async () => {
      const guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
      fixture = await templateFixture({ firecrackerBin: firecrackerBin as string });
      before = { fds: fdCount(), children: childPids() };
      orchestrator = await Orchestrator.open(fixture.config);
      await orchestrator.buildTemplate({
        request: {
          name: "ballooned",
          ociLayout: fixture.layoutDir,
          memoryMib: 128,
          vcpuCount: 1,
          network: false,
          balloon: {},
          kernelCommandLine: `console=ttyS0 sbx.balloon-scratch-mib=${SCRATCH_MIB}`,
        },
        resolver: testResolver(guest, firecrackerBin),
        readyMarker: TEST_GUEST_READY_MARKER,
      });
    }, 120_000);

    afterAll(async () => {
      await orchestrator?.close();
      if (fixture) await rm(fixture.dir, { recursive: true, force: true });
      if (before) {
        expect(childPids()).toEqual(before.children);
        expect(fdCount()).toBe(before.fds);
      }
    });

    it("the build records it, the restored VM has it, memory stats report it, admission packs it tighter", async () => {
      const template = (await orchestrator.templates()).find((t) => t.name === "ballooned");
      await using sandbox = await orchestrator.createSandbox({ template: "ballooned" });
      expect(sandbox.build.id).toBe(template?.build);
      expect(sandbox.build.boot?.balloon).toEqual({ freePageReporting: true, statsPollingIntervalS: 0 });
      // Firecracker v1.14 accepted the device before boot, and it came back with the UFFD restore.
      expect(await sandbox.firecracker.client.describeBalloonConfig()).toMatchObject({
        amount_mib: 0,
        deflate_on_oom: true,
        free_page_reporting: true,
      });
      const stats = await sandbox.memoryStats();
      expect(stats).toMatchObject({ guestBytes: 128 * MiB, balloon: true, removeEvents: 0 });
      expect(stats.residentBytes).toBeGreaterThan(0);
      expect(stats.peakResidentBytes).toBeGreaterThanOrEqual(stats.residentBytes);
      // 128 MiB at the balloon ratio (1.5 by default).
      expect(orchestrator.metrics().capacity.committed.memoryBytes).toBe(
        Math.ceil((128 * MiB) / fixture.config.balloonMemoryOvercommit),
      );
    }, 60_000);

    it("a guest that frees memory: REMOVE events, reclaimed bytes, Firecracker's resident size lower by most of it, checksums right", async () => {
      const scratch = SCRATCH_MIB * MiB;
      await using sandbox = await orchestrator.createSandbox({ template: "ballooned" });
      const fc = sandbox.firecracker;
      // The restored guest dirties its scratch every report cycle while the target is 0; after two
      // rounds it is resident, whichever round the snapshot cut.
      let since = 0;
      for (let round = 0; round < 2; round++)
        since =
          (await fc.waitForConsole(/SBX-GUEST balloon touched /, { timeoutMs: 30_000, since })).line.seq + 1;
      const dirty = await sandbox.memoryStats();
      expect(dirty).toMatchObject({ balloon: true, removeEvents: 0, zeroPages: 0 });

      since = fc.console.position;
      await fc.client.patchBalloon({ amount_mib: 1 });
      await fc.waitForConsole(/SBX-GUEST balloon reported bytes=/, { timeoutMs: 30_000, since });
      // Firecracker's madvise waits for the page-fault server to read each REMOVE, so they are counted
      // by the time the guest sees its buffers back; the wait only covers the counters reaching us.
      const reported = await statsOnce(sandbox, (stats) => stats.removeEvents >= scratch / REPORT_CHUNK);
      console.log(
        `[orchestrator] balloon: resident ${mib(dirty.residentBytes)} MiB dirty, ${mib(reported.residentBytes)} MiB after the report; reclaimed ${mib(reported.reclaimedBytes)} MiB, ${reported.removeEvents} REMOVE events`,
      );
      expect(reported.removeEvents).toBe(scratch / REPORT_CHUNK);
      expect(reported.reclaimedBytes).toBeGreaterThanOrEqual(scratch - 4 * MiB);
      expect(dirty.residentBytes - reported.residentBytes).toBeGreaterThanOrEqual(scratch - 4 * MiB);
      // The same per sandbox for the orchestrator's own sandboxes, and from the state directory's
      // records (what a process that does not own the sandbox, such as sbx doctor, can see).
      const own = await sandboxesMemoryStats(orchestrator.sandboxes);
      expect(own.sandboxes.find((s) => s.id === sandbox.id)?.reclaimedBytes).toBeGreaterThanOrEqual(
        scratch - 4 * MiB,
      );
      const { records } = await new StateDirectory(fixture.config.stateDir).listSandboxes();
      const recorded = (await recordedSandboxesMemory(records)).find((m) => m.id === sandbox.id);
      expect(recorded?.reclaimedBytes).toBeGreaterThanOrEqual(scratch - 4 * MiB);
      // The guest went on walking its region with the right checksums.
      await expectChecksumContinues(fc, lastIteration(fc));

      // The target back at 0: the guest takes its scratch again, and every page of it comes back as a
      // zero page from the server (the memory file still holds the old contents; the guest freed them).
      since = fc.console.position;
      await fc.client.patchBalloon({ amount_mib: 0 });
      await fc.waitForConsole(/SBX-GUEST balloon touched /, { timeoutMs: 30_000, since });
      const again = await statsOnce(sandbox, (stats) => stats.zeroPages >= scratch / 4096);
      expect(again.zeroPages).toBe(scratch / 4096);
      expect(again.residentBytes - reported.residentBytes).toBeGreaterThanOrEqual(scratch - 4 * MiB);
      await expectChecksumContinues(fc, lastIteration(fc));
    }, 120_000);
  },
);

const mib = (bytes: number) => (bytes / MiB).toFixed(1);

/** The sandbox's memory stats once `done` holds, or as they are after 10 s (the assertions then say what is off). */
async function statsOnce(
  sandbox: { memoryStats(): Promise<SandboxMemoryStats> },
  done: (stats: SandboxMemoryStats) => boolean,
): Promise<SandboxMemoryStats> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const stats = await sandbox.memoryStats();
    if (done(stats) || Date.now() >= deadline) return stats;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
