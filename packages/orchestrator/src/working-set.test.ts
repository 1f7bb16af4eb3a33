// Issue 18: a build's working set is recorded from one restore, and every create prefetches it.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeFileAtomic } from "@sbx/arch";
import {
  buildTestGuest,
  expectedGuestChecksums,
  parseTestGuestLine,
  realFirecracker,
  TEST_GUEST_REGION,
} from "@sbx/fc-client/testing";
import { decodeWorkingSet, type WorkingSet } from "@sbx/uffd";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildDir, readBuild } from "./builds.ts";
import { createConfig } from "./config.ts";
import { importBuild } from "./import-build.ts";
import { openOrchestratorState } from "./orchestrator-state.ts";
import { createSandbox } from "./sandbox.ts";
import { BUILD_FILES } from "./template-manifest.ts";
import { childPids } from "./test-capabilities.ts";
import { snapshotTestGuest } from "./test-guest-snapshot.ts";
import { testLaunchOptions } from "./test-launch-mode.ts";
import { importWithWorkingSet } from "./test-working-set-build.ts";

const { binary, skipReason } = realFirecracker({ testGuest: true });
const fdCount = () => readdirSync("/proc/self/fd").length;
const recordTemps = () => readdirSync(tmpdir()).filter((name) => name.startsWith("sbx-ws-"));
if (skipReason) console.log(`[orchestrator] working-set tests skipped: ${skipReason}`);
const alive = /^SBX-GUEST iter=\d+ sum=/;
const PAGE = 4096;
let dir: string;
let snapshot: { vmstate: string; memory: string };

beforeAll(async () => {
  if (skipReason || !binary) return;
  dir = mkdtempSync(join(tmpdir(), "sbx-working-set-"));
  await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") });
  snapshot = await snapshotTestGuest(binary, dir, { atLeast: 1 });
}, 60_000);
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The guest's last progress line, checked against the checksum its iteration must have: memory came back exact. */
function checkGuestSum(lines: string[]) {
  const progress = lines.map(parseTestGuestLine).findLast((p) => p !== undefined);
  expect(progress).toBeDefined();
  expect(progress!.checksum).toBe(expectedGuestChecksums(progress!.iteration).at(-1));
}

describe.skipIf(skipReason !== undefined)(
  `working-set record and prefetch with real Firecracker${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    it("records the pages the test guest walks, in its order, and every create prefetches them", async () => {
      await using state = await openOrchestratorState(
        createConfig({ stateDir: join(dir, "state"), firecrackerBin: binary!, ...testLaunchOptions() }),
      );
      const imported = await importWithWorkingSet(state, { template: "prefetched", ...snapshot, alive });
      const { manifest } = imported;
      const recorded = imported.recorded!;
      expect(manifest.files[BUILD_FILES.workingSet]?.sizeBytes).toBeGreaterThan(0);
      // The build directory holds the file build.json records, and nothing of the recording.
      const published = readFileSync(join(buildDir(state.config, manifest.id), BUILD_FILES.workingSet));
      expect(decodeWorkingSet(published)).toEqual(recorded.workingSet);
      expect((await readBuild(state.config, manifest.id)).files[BUILD_FILES.workingSet]).toEqual(
        manifest.files[BUILD_FILES.workingSet],
      );

      // The guest rewrites its region page by page, upwards: it resumed mid-walk, so the region's pages
      // come as one run up to the region's end, then (touched between the alive line and the end of the
      // recording) at most the first pages of its next walk, from the region's start.
      const regionRanges = recorded.workingSet.ranges.filter(
        (r) => r.offset >= TEST_GUEST_REGION.start && r.offset < TEST_GUEST_REGION.end,
      );
      const regionPages = regionRanges.reduce((sum, r) => sum + r.length / PAGE, 0);
      expect(regionRanges.length).toBeGreaterThanOrEqual(1);
      expect(regionRanges.length).toBeLessThanOrEqual(2);
      expect(regionRanges[0]!.offset + regionRanges[0]!.length).toBe(TEST_GUEST_REGION.end);
      if (regionRanges[1]) expect(regionRanges[1].offset).toBe(TEST_GUEST_REGION.start);
      // Only its code, stack, state and page tables besides: a handful of pages.
      expect(recorded.pages - regionPages).toBeLessThan(64);

      // On demand (the same snapshot, no working set) and prefetched, each checked by the guest's sum.
      await importBuild(state, { template: "on-demand", ...snapshot });
      let onDemandFaults: number;
      {
        await using sandbox = await createSandbox(state, { template: "on-demand", alive });
        checkGuestSum(sandbox.firecracker.console.lines(5));
        onDemandFaults = sandbox.server.metrics().faultsOnDemand;
        expect(sandbox.server.metrics().prefetched).toBe(0);
      }
      {
        await using sandbox = await createSandbox(state, { template: "prefetched", alive });
        checkGuestSum(sandbox.firecracker.console.lines(5));
        const metrics = sandbox.server.metrics();
        expect(metrics.prefetched).toBeGreaterThan(recorded.pages * 0.5);
        expect(metrics.prefetched + metrics.prefetchPresent + metrics.prefetchSkipped).toBeLessThanOrEqual(
          recorded.pages,
        );
        // Faults at the alive line: what the prefetch did not save.
        expect(metrics.faultsOnDemand).toBeLessThan(onDemandFaults * 0.5);
      }
    }, 120_000);

    it("without an alive line, records until the faults go quiet: every page the guest walks, once", async () => {
      const before = { fds: fdCount(), children: childPids(), temps: recordTemps() };
      const state = await openOrchestratorState(
        createConfig({ stateDir: join(dir, "state-quiet"), firecrackerBin: binary!, ...testLaunchOptions() }),
      );
      const { manifest, recorded } = await importWithWorkingSet(state, {
        template: "quiet",
        ...snapshot,
        alive: "quiet",
      });
      // The recording's Firecracker, sockets, temp directory and disk clone are gone.
      expect(readdirSync(buildDir(state.config, manifest.id)).sort()).toEqual(
        [
          BUILD_FILES.manifest,
          BUILD_FILES.vmstate,
          BUILD_FILES.memory,
          BUILD_FILES.header,
          BUILD_FILES.workingSet,
        ].sort(),
      );
      await state.close();
      expect(childPids()).toEqual(before.children);
      expect(fdCount()).toBe(before.fds);
      expect(recordTemps()).toEqual(before.temps);
      const pages = new Set<number>();
      for (const range of recorded!.workingSet.ranges)
        for (let offset = range.offset; offset < range.offset + range.length; offset += PAGE)
          pages.add(offset);
      // The guest rewrites every page of its region on every walk: once its faults stop, all of them
      // are in, and besides them only its code, stack, state and page tables.
      const region = [...pages].filter((o) => o >= TEST_GUEST_REGION.start && o < TEST_GUEST_REGION.end);
      expect(region.length).toBe((TEST_GUEST_REGION.end - TEST_GUEST_REGION.start) / PAGE);
      expect(pages.size - region.length).toBeLessThan(64);
      expect(pages.size).toBe(recorded!.pages);
    }, 120_000);

    it("a guest whose working set moved: recorded where it walks, and another's set still restores it exactly", async () => {
      const shifted = join(dir, "shifted");
      mkdirSync(shifted);
      const moved = await snapshotTestGuest(binary!, shifted, {
        atLeast: 1,
        bootArgs: "console=ttyS0 sbx.region-shift-mib=48",
      });
      await using state = await openOrchestratorState(
        createConfig({ stateDir: join(dir, "state-moved"), firecrackerBin: binary!, ...testLaunchOptions() }),
      );
      const MiB = 1024 * 1024;
      const walked = (set: WorkingSet, from: number) =>
        set.ranges
          .flatMap((r) => Array.from({ length: r.length / PAGE }, (_, i) => r.offset + i * PAGE))
          .filter((offset) => offset >= from && offset < from + 48 * MiB).length;
      const own = (await importWithWorkingSet(state, { template: "moved", ...moved, alive: "quiet" }))
        .recorded!;
      expect(walked(own.workingSet, 64 * MiB)).toBe(12288);
      expect(walked(own.workingSet, 16 * MiB)).toBe(0);
      // The unshifted guest's working set, on the shifted guest: every page it lists is the wrong one.
      const other = (await importWithWorkingSet(state, { template: "first", ...snapshot, alive: "quiet" }))
        .recorded!;
      await importWithWorkingSet(state, { template: "stale", ...moved, alive, workingSet: other.workingSet });
      await using sandbox = await createSandbox(state, { template: "stale", alive });
      checkGuestSum(sandbox.firecracker.console.lines(5));
      const metrics = sandbox.server.metrics();
      expect(metrics.prefetched).toBeGreaterThan(0);
      expect(metrics.faultsOnDemand).toBeGreaterThan(12_000);
    }, 120_000);

    it("a corrupt working set is ignored: the create restores on demand", async () => {
      await using state = await openOrchestratorState(
        createConfig({
          stateDir: join(dir, "state-corrupt"),
          firecrackerBin: binary!,
          ...testLaunchOptions(),
        }),
      );
      const { manifest } = await importWithWorkingSet(state, { template: "corrupt", ...snapshot, alive });
      const path = join(buildDir(state.config, manifest.id), BUILD_FILES.workingSet);
      const bytes = Buffer.from(readFileSync(path));
      bytes[40] = (bytes[40] as number) ^ 0xff;
      await writeFileAtomic(path, bytes);
      await using sandbox = await createSandbox(state, { template: "corrupt", alive });
      checkGuestSum(sandbox.firecracker.console.lines(5));
      expect(sandbox.server.metrics().prefetched).toBe(0);
    }, 120_000);
  },
);
