// A real Firecracker restores the test guest's snapshot with its memory served by PageFaultServer;
// the guest's running checksum after resume proves every page came back byte-exact.
import { accessSync, constants } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { configureAndStart, launchFirecracker } from "@sbx/fc-client";
import {
  buildTestGuest,
  expectedGuestChecksums,
  parseTestGuestLine,
  TEST_GUEST_READY_MARKER,
} from "@sbx/fc-client/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PageFaultServer } from "./server.ts";
import { childPids, fdCount, openSpecialFds, settle } from "./test-counts.ts";

const firecrackerBin = process.env.FIRECRACKER_BIN;
const kvm = (() => {
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
})();
const skipReason = !firecrackerBin ? "FIRECRACKER_BIN not set" : !kvm ? "/dev/kvm is not usable" : undefined;
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
      let lastIteration = 0;
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
        lastIteration = parseTestGuestLine(line.line.text)!.iteration;
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
      const next = await second.waitForConsole(/^SBX-GUEST iter=\d+ sum=[0-9a-f]{8}$/, {
        timeoutMs: 30_000,
        since,
      });
      const progress = parseTestGuestLine(next.line.text)!;
      expect(progress.iteration).toBeGreaterThan(lastIteration);
      expect(progress.checksum).toBe(expectedGuestChecksums(progress.iteration)[progress.iteration - 1]);
      await second.kill({ graceMs: 1000 });
      expect((await server.stopped).reason).toBe("peer-exited");
      const metrics = server.metrics(); // read after the loop stopped: the counters are final
      expect(metrics.faults).toBeGreaterThan(100);
      expect(metrics.pagesCopied + metrics.zeroPages).toBe(metrics.faults);
    });
  },
);
