// A jailed Firecracker restores a snapshot over userfaultfd from @sbx/uffd's page-fault server, whose
// socket lives inside the new jail: the chroot, the uid/gid and the peer check work together, and the
// guest's checksum proves every page came back. It lives here because fc-client and uffd are leaves
// that may not import each other.
import { readdirSync, rmdirSync, statSync } from "node:fs";
import { link, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { launchFirecracker } from "@sbx/fc-client";
import {
  buildTestGuest,
  expectChecksumContinues,
  parseTestGuestLine,
  realFirecracker,
  TEST_GUEST_READY_MARKER,
} from "@sbx/fc-client/testing";
import { PageFaultServer } from "@sbx/uffd";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker({ testGuest: true });
const jailerBin = process.env.JAILER_BIN || undefined;
const skipReason =
  firecrackerSkip ??
  (!jailerBin ? "JAILER_BIN not set" : process.getuid?.() !== 0 ? "the jailer needs root" : undefined);
if (skipReason) console.log(`[integration] jailed uffd restore skipped: ${skipReason}`);

const nonce = `${process.pid.toString(36)}${Date.now().toString(36).slice(-4)}`;
const UID = 64_125;

function entries(dir: string): string[] {
  try {
    return readdirSync(dir).sort();
  } catch {
    return [];
  }
}

/** Per-VM cgroup directories under `parent`, in every hierarchy. */
function cgroupChildren(parent: string): string[] {
  return entries("/sys/fs/cgroup").flatMap((hierarchy) => {
    const dir = join("/sys/fs/cgroup", hierarchy, parent);
    return entries(dir)
      .map((name) => join(dir, name))
      .filter((path) => statSync(path).isDirectory());
  });
}

describe.skipIf(skipReason !== undefined)(
  `jailed restore over userfaultfd${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let dir: string;
    let guest: string;
    let fdsBefore: number | undefined;
    const parentCgroup = `sbx-it-${nonce}`;
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "sbx-it-"));
      guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
      fdsBefore = readdirSync("/proc/self/fd").length;
    });
    afterAll(async () => {
      if (fdsBefore !== undefined) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        expect(readdirSync("/proc/self/fd").length).toBeLessThanOrEqual(fdsBefore);
      }
      // The shared parent cgroup is kept by the launcher by design; this test's own is removed.
      for (const hierarchy of entries("/sys/fs/cgroup")) {
        try {
          rmdirSync(join("/sys/fs/cgroup", hierarchy, parentCgroup));
        } catch {
          // not created in this hierarchy
        }
      }
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it("boots jailed, snapshots, restores in a new jail from a page-fault server inside it; the checksum continues", async () => {
      const jail = {
        jailerBinary: jailerBin!,
        uid: UID,
        gid: UID,
        chrootBaseDir: join(dir, "j"),
        parentCgroup,
        cgroupVersion: 1 as const,
        cgroups: { "memory.limit_in_bytes": 512 * 1024 * 1024, "pids.max": 64 },
      };
      const snapshotPath = join(dir, "vmstate");
      const memoryFile = join(dir, "mem");
      let lastIteration = 0;
      {
        await using first = await launchFirecracker({
          binary: firecrackerBin!,
          id: `sbx-it-${nonce}-1`,
          logPath: join(dir, "fc1.log"),
          jail: { ...jail, files: { kernel: guest } },
        });
        await first.client.putGuestBootSource({ kernel_image_path: "/kernel", boot_args: "console=ttyS0" });
        await first.client.putMachineConfiguration({ vcpu_count: 1, mem_size_mib: 128 });
        await first.client.createSyncAction({ action_type: "InstanceStart" });
        await first.waitForConsole(TEST_GUEST_READY_MARKER, { timeoutMs: 10_000 });
        const line = await first.waitForConsole(/^SBX-GUEST iter=([2-9]|\d\d+) /, { timeoutMs: 20_000 });
        lastIteration = parseTestGuestLine(line.line.text)!.iteration;
        await first.client.patchVm({ state: "Paused" });
        await first.client.createSnapshot({
          snapshot_type: "Full",
          snapshot_path: "/vmstate",
          mem_file_path: "/mem",
        });
        await link(first.jail!.hostPath("/vmstate"), snapshotPath);
        await link(first.jail!.hostPath("/mem"), memoryFile);
      }

      await using second = await launchFirecracker({
        binary: firecrackerBin!,
        id: `sbx-it-${nonce}-2`,
        logPath: join(dir, "fc2.log"),
        uffdRestore: true,
        jail: { ...jail, files: { vmstate: snapshotPath } },
      });
      // The server's socket is created inside the jail, owned by the jail's uid, and only the jailed
      // Firecracker (by its host pid) may connect.
      await using server = new PageFaultServer({
        socketPath: second.jail!.hostPath("/uffd.sock"),
        memoryFile,
        owner: { uid: UID, gid: UID },
        expectedPeerPid: second.pid,
      });
      await server.listen();
      expect(statSync(second.jail!.hostPath("/uffd.sock")).uid).toBe(UID);
      const since = second.console.position;
      await second.client.loadSnapshot({
        snapshot_path: "/vmstate",
        mem_backend: { backend_type: "Uffd", backend_path: "/uffd.sock" },
        resume_vm: true,
      });
      const ready = await server.ready;
      expect(ready.peerPid).toBe(second.pid);
      await expectChecksumContinues(second, lastIteration, { since, timeoutMs: 30_000 });

      await second.kill({ graceMs: 1000 });
      expect((await server.stopped).reason).toBe("peer-exited");
      expect(server.metrics().faults).toBeGreaterThan(100);
      // Both jails are gone: chroots and cgroups.
      expect(entries(join(dir, "j", "firecracker"))).toEqual([]);
      expect(cgroupChildren(parentCgroup)).toEqual([]);
    });
  },
);
