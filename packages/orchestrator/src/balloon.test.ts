// The balloon template option: the request's default, the VM description Firecracker gets, and with a
// real Firecracker a build whose snapshot carries the balloon and whose sandboxes resume with it.
// What cannot be shown here: the tiny test guest has no virtio-balloon driver, so no guest reports free
// pages and no REMOVE arrives from a VM; memory-stats.test.ts shows REMOVE -> reclaimed bytes with the
// UFFD test peer instead.
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildTestGuest, realFirecracker, TEST_GUEST_READY_MARKER } from "@sbx/fc-client/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createConfig } from "./config.ts";
import { Orchestrator } from "./orchestrator.ts";
import { type TemplateBuildContext, templateVmConfig } from "./template-build.ts";
import { parseTemplateRequest } from "./template-inputs.ts";
import type { BootParameters } from "./template-manifest.ts";
import { type TemplateFixture, templateFixture, testResolver } from "./test-template-fixture.ts";

const MiB = 1024 * 1024;

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

    beforeAll(async () => {
      const guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
      fixture = await templateFixture({ firecrackerBin: firecrackerBin as string });
      orchestrator = await Orchestrator.open(fixture.config);
      await orchestrator.buildTemplate({
        request: {
          name: "ballooned",
          ociLayout: fixture.layoutDir,
          memoryMib: 128,
          vcpuCount: 1,
          network: false,
          balloon: {},
        },
        resolver: testResolver(guest, firecrackerBin),
        readyMarker: TEST_GUEST_READY_MARKER,
      });
    }, 120_000);

    afterAll(async () => {
      await orchestrator?.close();
      if (fixture) await rm(fixture.dir, { recursive: true, force: true });
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
  },
);
