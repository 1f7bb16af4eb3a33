// End to end with a real Firecracker and the tiny test guest: a template snapshot, 10 sandboxes from it
// at once through the page-fault server, one paused to a Diff snapshot and resumed from the layers,
// all killed, nothing left behind.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostArch } from "@sbx/arch";
import { configureAndStart, launchFirecracker } from "@sbx/fc-client";
import {
  buildTestGuest,
  expectedGuestChecksums,
  parseTestGuestLine,
  realFirecracker,
} from "@sbx/fc-client/testing";
import { resolveNativeHelper } from "@sbx/uffd";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createSandbox, defaultSandboxSteps, type Sandbox } from "./sandbox.ts";

const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker({ testGuest: true });
const skipReason = firecrackerSkip;
if (skipReason) console.log(`[orchestrator] sandbox end-to-end test skipped: ${skipReason}`);

const fdCount = () => readdirSync("/proc/self/fd").length;
const childPids = () =>
  readdirSync("/proc")
    .filter((e) => /^\d+$/.test(e))
    .filter((e) => {
      try {
        const stat = readFileSync(`/proc/${e}/stat`, "utf8");
        return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === process.pid;
      } catch {
        return false;
      }
    });
const GUEST_LINE = /^SBX-GUEST iter=\d+ sum=[0-9a-f]{8}$/;

/** The guest's newest progress line after `since`, checked against a never-interrupted guest. */
async function checksumContinues(sandbox: Sandbox, since: number, after: number) {
  const next = await sandbox.firecracker.waitForConsole(
    new RegExp(`^SBX-GUEST iter=(\\d{${String(after + 1).length},}) `),
    { timeoutMs: 60_000, since },
  );
  const progress = parseTestGuestLine(next.line.text)!;
  expect(progress.iteration).toBeGreaterThan(after);
  expect(progress.checksum).toBe(expectedGuestChecksums(progress.iteration)[progress.iteration - 1]);
  return progress.iteration;
}

describe.skipIf(skipReason !== undefined)(
  `sandboxes from a snapshot${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let dir: string;
    let template: { vmstate: string; layers: string[] };
    let templateIteration = 0;
    let before: { fds: number; children: string[] };

    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "sbx-orchestrator-e2e-"));
      const guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
      before = { fds: fdCount(), children: childPids() };
      await using fc = await launchFirecracker({
        binary: firecrackerBin!,
        id: "sbx-template",
        logPath: join(dir, "template.log"),
      });
      await configureAndStart(fc.client, {
        "boot-source": { kernel_image_path: guest, boot_args: "console=ttyS0" },
        "machine-config": { vcpu_count: 1, mem_size_mib: 128, track_dirty_pages: true },
      });
      const line = await fc.waitForConsole(/^SBX-GUEST iter=([2-9]|\d\d+) /, { timeoutMs: 30_000 });
      templateIteration = parseTestGuestLine(line.line.text)!.iteration;
      await fc.client.patchVm({ state: "Paused" });
      template = { vmstate: join(dir, "vmstate"), layers: [join(dir, "mem")] };
      await fc.client.createSnapshot({
        snapshot_type: "Full",
        snapshot_path: template.vmstate,
        mem_file_path: template.layers[0]!,
      });
    }, 60_000);

    afterAll(async () => {
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(childPids()).toEqual(before.children);
      expect(fdCount()).toBeLessThanOrEqual(before.fds);
      await rm(dir, { recursive: true, force: true });
    });

    it("10 sandboxes at once, one paused and resumed from template + diff, all killed, nothing left", async () => {
      const sandboxes = await Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          createSandbox({
            firecrackerBin: firecrackerBin!,
            snapshot: template,
            directory: join(dir, `sbx-${i}`),
            alive: GUEST_LINE,
          }),
        ),
      );
      try {
        expect(new Set(sandboxes.map((s) => s.firecracker.pid)).size).toBe(10);
        for (const sandbox of sandboxes) await checksumContinues(sandbox, 0, templateIteration);
        expect(sandboxes[0]!.timings.map((t) => t.step)).toEqual(defaultSandboxSteps().names);

        // Pause one to a Diff snapshot, kill it, resume it from the layer stack: the guest continues.
        const first = sandboxes[0]!;
        const lines = first.firecracker.console
          .lines()
          .map(parseTestGuestLine)
          .filter((p) => p !== undefined);
        const paused = await first.pause();
        expect(paused.layers).toHaveLength(2);
        const pausedAt = Math.max(...lines.map((p) => p!.iteration));
        const resumeDir = join(dir, "resumed");
        {
          await using resumed = await createSandbox({
            firecrackerBin: firecrackerBin!,
            snapshot: paused,
            directory: resumeDir,
            alive: GUEST_LINE,
          });
          await first.kill({ keepFiles: true }); // the diff lives in its directory until the resumed one is gone
          await checksumContinues(resumed, 0, pausedAt);
          // Layers are served by the native helper too, wherever this checkout has one.
          expect(resumed.server.codePath).toBe(
            resolveNativeHelper("auto", hostArch()) ? "native" : "pure-ffi",
          );
        }
        expect(existsSync(resumeDir)).toBe(false);
        await rm(first.directory, { recursive: true, force: true });
      } finally {
        await Promise.all(sandboxes.map((s) => s.kill()));
      }
      for (let i = 0; i < 10; i++) expect(existsSync(join(dir, `sbx-${i}`))).toBe(false);
    }, 180_000);

    it("a failing step undoes the ones before it", async () => {
      const directory = join(dir, "failing");
      await expect(
        createSandbox({
          firecrackerBin: firecrackerBin!,
          snapshot: { vmstate: join(dir, "no-such-vmstate"), layers: template.layers },
          directory,
        }),
      ).rejects.toThrow();
      expect(existsSync(directory)).toBe(false);
    });
  },
);
