import { existsSync } from "node:fs";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { configureAndStart } from "./configure.ts";
import { launchFirecracker } from "./launcher.ts";
import { readMetricsFile } from "./metrics.ts";
import { childPids, fdCount, launcherTempDirs, settle } from "./test-process-counts.ts";
import { realFirecracker } from "./testing/real-firecracker.ts";
import {
  buildTestGuest,
  expectedGuestChecksums,
  parseTestGuestLine,
  TEST_GUEST_READY_MARKER,
  type TestGuestProgress,
} from "./testing/tiny-guest.ts";

const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker({ testGuest: true });
const skipReason = firecrackerSkip;
if (skipReason) console.log(`[fc-client] real-Firecracker tests skipped: ${skipReason}`);

function progressLines(lines: string[]): TestGuestProgress[] {
  return lines.map(parseTestGuestLine).filter((p): p is TestGuestProgress => p !== undefined);
}

describe.skipIf(skipReason !== undefined)(
  `real Firecracker${skipReason ? ` (skipped: ${skipReason})` : ""}: boot the test guest, snapshot, restore`,
  () => {
    let dir: string;
    let guestPath: string;
    let before: { fds: number; children: number[]; temps: string[] };

    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "sbx-real-fc-test-"));
      guestPath = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
      before = { fds: fdCount(), children: childPids(), temps: launcherTempDirs("sbx-real-") };
    });
    afterAll(async () => {
      if (before) {
        await settle(100);
        expect(childPids()).toEqual(before.children);
        expect(fdCount()).toBe(before.fds);
        expect(launcherTempDirs("sbx-real-")).toEqual(before.temps);
      }
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it("launch, configure, start, marker, pause, full snapshot; load from file, resume, checksum continues, describe, kill", async () => {
      const binary = firecrackerBin!;
      const snapshotPath = join(dir, "vmstate");
      const memPath = join(dir, "mem");
      const metricsPath = join(dir, "metrics.ndjson");

      // 1. A fresh VM from the test guest.
      const first = await launchFirecracker({
        binary,
        id: "sbx-real-1",
        logPath: join(dir, "fc1.log"),
        metricsPath,
      });
      let lastBefore: TestGuestProgress;
      try {
        await configureAndStart(first.client, {
          "boot-source": { kernel_image_path: guestPath, boot_args: "console=ttyS0" },
          "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
        });
        await first.waitForConsole(TEST_GUEST_READY_MARKER, { timeoutMs: 10_000 });
        await first.waitForConsole(/^SBX-GUEST iter=([2-9]|\d\d+) /, { timeoutMs: 20_000 });
        await first.client.patchVm({ state: "Paused" });
        await settle(200); // let the pipe deliver what the guest printed before the pause
        const seen = progressLines(first.console.lines());
        expect(seen.length).toBeGreaterThanOrEqual(2);
        lastBefore = seen.at(-1)!;
        const expected = expectedGuestChecksums(lastBefore.iteration);
        for (const progress of seen) expect(progress.checksum).toBe(expected[progress.iteration - 1]);

        await first.client.createSnapshot({
          snapshot_type: "Full",
          snapshot_path: snapshotPath,
          mem_file_path: memPath,
        });
        expect((await stat(memPath)).size).toBe(128 * 1024 * 1024);
        expect((await stat(snapshotPath)).size).toBeGreaterThan(0);

        await first.client.createSyncAction({ action_type: "FlushMetrics" });
        const { metrics } = await readMetricsFile(metricsPath);
        expect(metrics.length).toBeGreaterThan(0);
        expect(typeof metrics.at(-1)!.utc_timestamp_ms).toBe("number");
        expect(metrics.at(-1)!.vmm).toBeDefined();
      } finally {
        // Paused VM: SendCtrlAltDel would do nothing, so kill() goes straight to SIGTERM.
        await first.kill({ graceMs: 2000 });
      }
      expect(existsSync(first.socketPath)).toBe(false);

      // 2. A new Firecracker restores it from the files and the guest continues where it stopped.
      const second = await launchFirecracker({ binary, id: "sbx-real-2", logPath: join(dir, "fc2.log") });
      try {
        const since = second.console.position;
        await second.client.loadSnapshot({
          snapshot_path: snapshotPath,
          mem_backend: { backend_type: "File", backend_path: memPath },
          resume_vm: false,
        });
        await second.client.patchVm({ state: "Resumed" });
        const next = await second.waitForConsole(/^SBX-GUEST iter=\d+ sum=[0-9a-f]{8}$/, {
          timeoutMs: 20_000,
          since,
        });
        const progress = parseTestGuestLine(next.line.text)!;
        // It continued (no reboot: no ready marker, iteration past the last one before the snapshot) ...
        expect(second.console.lines().includes(TEST_GUEST_READY_MARKER)).toBe(false);
        expect(progress.iteration).toBeGreaterThan(lastBefore.iteration);
        // ... and its memory came back byte-exact: the checksum is the one a never-paused guest prints.
        expect(progress.checksum).toBe(expectedGuestChecksums(progress.iteration)[progress.iteration - 1]);

        const info = await second.client.describeInstance();
        expect(info.id).toBe("sbx-real-2");
        expect(info.state).toBe("Running");
        expect(info.vmm_version).toMatch(/^\d+\.\d+\.\d+/);
      } finally {
        // Running on x86_64: kill() sends SendCtrlAltDel first; the test guest ignores it, so SIGKILL follows.
        const status = await second.kill({ graceMs: 1000 });
        expect(status.signal).toBe(process.arch === "x64" ? "SIGKILL" : "SIGTERM");
      }
      expect(existsSync(second.socketPath)).toBe(false);
      expect(childPids()).toEqual(before.children);
    });

    it("config-file mode boots the guest without API calls", async () => {
      await using fc = await launchFirecracker({
        binary: firecrackerBin!,
        id: "sbx-real-cfg",
        logPath: join(dir, "fc3.log"),
        configFile: {
          "boot-source": { kernel_image_path: guestPath, boot_args: "console=ttyS0" },
          "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
          drives: [],
        },
      });
      await fc.waitForConsole(TEST_GUEST_READY_MARKER, { timeoutMs: 10_000 });
      expect((await fc.client.describeInstance()).state).toBe("Running");
    });

    it("a provisioning boot prints the exit marker and ends in a reset that makes Firecracker exit", async () => {
      for (const [extra, status] of [
        ["", 0],
        [" sbx.test-provision-status=7", 7],
      ] as const) {
        // Firecracker's log goes to a file, as in every other test here: on stdout a log line can land
        // inside the guest's marker line, which the serial device writes a byte at a time (a full run on
        // a loaded host once missed the marker and had one console line more than usual).
        await using fc = await launchFirecracker({
          binary: firecrackerBin!,
          id: "sbx-real-provision",
          logPath: join(dir, `provision-${status}.log`),
        });
        await configureAndStart(fc.client, {
          "boot-source": { kernel_image_path: guestPath, boot_args: `console=ttyS0 sbx.provision=1${extra}` },
          "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
        });
        const exit = await fc.exited;
        expect(exit.exitCode).toBe(0);
        const lines = fc.console.lines();
        expect(lines).toContain(`SBX_PROVISION_EXIT status=${status}`);
        expect(lines).not.toContain(TEST_GUEST_READY_MARKER);
      }
    });
  },
);
