// A real Firecracker restores the test guest's snapshot with its memory served by PageFaultServer;
// the guest's running checksum after resume proves every page came back byte-exact.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as settle } from "node:timers/promises";
import { childPids, openFdCount as fdCount, openFdTargets } from "@sbx/arch/testing";
import { configureAndStart, launchFirecracker } from "@sbx/fc-client";
import {
  buildTestGuest,
  expectChecksumContinues,
  lastIteration,
  parseTestGuestLine,
  realFirecracker,
  TEST_GUEST_READY_MARKER,
} from "@sbx/fc-client/testing";
import { PageFaultServer } from "@sbx/uffd";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/** A leaked userfaultfd, memfd or eventfd shows up by its link target. */
const openSpecialFds = () => openFdTargets(/userfaultfd|^\/memfd:|eventfd/);

const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker({ testGuest: true });
const skipReason = firecrackerSkip;
if (skipReason) console.log(`[uffd] real-Firecracker restore test skipped: ${skipReason}`);

describe.skipIf(skipReason !== undefined)(
  `a real Firecracker snapshot restored through the page-fault server${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let dir: string;
    let guest: string;
    let before: { fds: number; special: string[]; children: number[] };
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "sbx-uffd-real-"));
      guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
      before = { fds: fdCount(), special: openSpecialFds(), children: childPids() };
    });
    afterAll(async () => {
      await settle(100);
      expect(openSpecialFds()).toEqual(before.special);
      expect(fdCount()).toBeLessThanOrEqual(before.fds);
      expect(childPids()).toEqual(before.children);
      await rm(dir, { recursive: true, force: true });
    });

    it("boots, snapshots, restores with a Uffd backend, and the checksum continues", async () => {
      const snapshotPath = join(dir, "vmstate");
      const memoryFile = join(dir, "mem");
      let iterationAtSnapshot = 0;
      {
        await using first = await launchFirecracker({
          binary: firecrackerBin!,
          id: "sbx-uffd-1",
          logPath: join(dir, "fc1.log"),
        });
        await configureAndStart(first.client, {
          "boot-source": { kernel_image_path: guest, boot_args: "console=ttyS0" },
          "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
        });
        await first.waitForConsole(TEST_GUEST_READY_MARKER, { timeoutMs: 10_000 });
        const line = await first.waitForConsole(/^SBX-GUEST iter=([2-9]|\d\d+) /, { timeoutMs: 20_000 });
        iterationAtSnapshot = parseTestGuestLine(line.line.text)!.iteration;
        await first.client.patchVm({ state: "Paused" });
        await first.client.createSnapshot({
          snapshot_type: "Full",
          snapshot_path: snapshotPath,
          mem_file_path: memoryFile,
        });
      }

      await using server = new PageFaultServer({ socketPath: join(dir, "uffd.sock"), memoryFile });
      await server.listen();
      await using second = await launchFirecracker({
        binary: firecrackerBin!,
        id: "sbx-uffd-2",
        logPath: join(dir, "fc2.log"),
      });
      const since = second.console.position;
      await second.client.loadSnapshot({
        snapshot_path: snapshotPath,
        mem_backend: { backend_type: "Uffd", backend_path: server.socketPath },
        resume_vm: true,
      });
      const ready = await server.ready;
      expect(ready.peerPid).toBe(second.pid);
      expect(ready.regions.reduce((sum, r) => sum + r.size, 0)).toBe(128 * 1024 * 1024);
      await expectChecksumContinues(second, iterationAtSnapshot, { since, timeoutMs: 30_000 });
      await second.kill({ graceMs: 1000 });
      expect((await server.stopped).reason).toBe("peer-exited");
      const metrics = server.metrics(); // read after the loop stopped: the counters are final
      expect(metrics.faults).toBeGreaterThan(100);
      // Every fault installed its page, or found it installed by a fault on the same page from another
      // thread of Firecracker's a moment earlier (EEXIST): none is lost, none counted twice.
      expect(metrics.pagesCopied + metrics.zeroPages + metrics.eexist).toBe(metrics.faults);
      expect(metrics.eexist).toBeLessThan(metrics.faults / 100);
    });
  },
);

describe.skipIf(skipReason !== undefined)(
  `a real Firecracker Diff snapshot restored from the layer stack${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let dir: string;
    let guest: string;
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "sbx-uffd-diff-"));
      guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
    });
    afterAll(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it("template → restore (uffd) → run → Diff snapshot → restore from template + diff: the checksum continues", async () => {
      const path = (name: string) => join(dir, name);
      {
        await using fc = await launchFirecracker({
          binary: firecrackerBin!,
          id: "sbx-diff-0",
          logPath: path("fc0.log"),
        });
        await configureAndStart(fc.client, {
          "boot-source": { kernel_image_path: guest, boot_args: "console=ttyS0" },
          "machine-config": { vcpu_count: 1, mem_size_mib: 128, track_dirty_pages: true },
        });
        await fc.waitForConsole(/^SBX-GUEST iter=([2-9]|\d\d+) /, { timeoutMs: 20_000 });
        await fc.client.patchVm({ state: "Paused" });
        await fc.client.createSnapshot({
          snapshot_type: "Full",
          snapshot_path: path("vmstate0"),
          mem_file_path: path("mem0"),
        });
      }

      let iterationAtDiff: number;
      {
        await using server = new PageFaultServer({ socketPath: path("u1.sock"), memoryFile: path("mem0") });
        await server.listen();
        await using fc = await launchFirecracker({
          binary: firecrackerBin!,
          id: "sbx-diff-1",
          logPath: path("fc1.log"),
        });
        const since = fc.console.position;
        await fc.client.loadSnapshot({
          snapshot_path: path("vmstate0"),
          mem_backend: { backend_type: "Uffd", backend_path: server.socketPath },
          track_dirty_pages: true,
          resume_vm: true,
        });
        const first = await fc.waitForConsole(/^SBX-GUEST iter=\d+ /, { timeoutMs: 30_000, since });
        const after = parseTestGuestLine(first.line.text)!.iteration;
        await fc.waitForConsole(new RegExp(`^SBX-GUEST iter=${after + 2} `), { timeoutMs: 30_000, since });
        await fc.client.patchVm({ state: "Paused" });
        await settle(200);
        iterationAtDiff = lastIteration(fc);
        await fc.client.createSnapshot({
          snapshot_type: "Diff",
          snapshot_path: path("vmstate1"),
          mem_file_path: path("mem1"),
        });
        await fc.kill({ graceMs: 1000 });
      }

      await using server = new PageFaultServer({
        socketPath: path("u2.sock"),
        layers: [{ path: path("mem0") }, { path: path("mem1") }],
      });
      await server.listen();
      await using fc = await launchFirecracker({
        binary: firecrackerBin!,
        id: "sbx-diff-2",
        logPath: path("fc2.log"),
      });
      const since = fc.console.position;
      await fc.client.loadSnapshot({
        snapshot_path: path("vmstate1"),
        mem_backend: { backend_type: "Uffd", backend_path: server.socketPath },
        resume_vm: true,
      });
      await expectChecksumContinues(fc, iterationAtDiff, { since, timeoutMs: 30_000 });
      await fc.kill({ graceMs: 1000 });
    });
  },
);
