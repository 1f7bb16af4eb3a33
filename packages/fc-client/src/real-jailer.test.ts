import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, readlinkSync, statSync } from "node:fs";
import { link, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readCgroupMounts, removeCgroupDirs } from "./cgroups.ts";
import { readJailerAndFirecrackerVersions } from "./jailer-version.ts";
import { launchFirecracker } from "./launcher.ts";
import { cgroupChildren, entries, firecrackerPids } from "./test-jail-counts.ts";
import { childPids, fdCount, settle, settledFdCount } from "./test-process-counts.ts";
import { realFirecracker } from "./testing/real-firecracker.ts";
import {
  buildTestGuest,
  expectedGuestChecksums,
  parseTestGuestLine,
  TEST_GUEST_READY_MARKER,
  type TestGuestProgress,
} from "./testing/tiny-guest.ts";

const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker({ testGuest: true });
const jailerBin = process.env.JAILER_BIN || undefined;
const skipReason =
  firecrackerSkip ??
  (!jailerBin ? "JAILER_BIN not set" : process.getuid?.() !== 0 ? "the jailer needs root" : undefined);
if (skipReason) console.log(`[fc-client] real-jailer tests skipped: ${skipReason}`);

const nonce = `${process.pid.toString(36)}${Date.now().toString(36).slice(-4)}`;
const UID = 64_124;

function progressLines(lines: string[]): TestGuestProgress[] {
  return lines.map(parseTestGuestLine).filter((p): p is TestGuestProgress => p !== undefined);
}

function statusField(pid: number, field: string): string {
  const line = readFileSync(`/proc/${pid}/status`, "utf8")
    .split("\n")
    .find((l) => l.startsWith(`${field}:`));
  return line!.slice(field.length + 1).trim();
}

describe.skipIf(skipReason !== undefined)(
  `real jailer${skipReason ? ` (skipped: ${skipReason})` : ""}: jailed boot, snapshot, jailed restore`,
  () => {
    let dir: string;
    let base: string;
    let guestPath: string;
    const parentCgroup = `sbx-jt-${nonce}`;
    const netns = `sbx-jt-${nonce}`;
    let before: { fds: number; children: number[] };

    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "sbx-jt-"));
      base = join(dir, "j");
      guestPath = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
      execFileSync("ip", ["netns", "add", netns]);
      before = { fds: fdCount(), children: childPids() };
    });
    afterAll(async () => {
      if (before) {
        await settle(100);
        expect(childPids()).toEqual(before.children);
        expect(await settledFdCount(before.fds)).toBe(before.fds);
      }
      execFileSync("ip", ["netns", "del", netns], { stdio: "ignore" });
      await removeCgroupDirs(cgroupChildren(parentCgroup));
      await removeCgroupDirs(entries("/sys/fs/cgroup").map((h) => join("/sys/fs/cgroup", h, parentCgroup)));
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it("reports the jailer and Firecracker versions as a pair", async () => {
      const versions = await readJailerAndFirecrackerVersions({
        jailer: jailerBin!,
        firecracker: firecrackerBin!,
      });
      expect(versions.jailer).toMatch(/^\d+\.\d+\.\d+/);
      expect(versions.firecracker).toMatch(/^\d+\.\d+\.\d+/);
    });

    it("a jailed Firecracker that exits before ready fails the launch with its output, and leaves no chroot, cgroup or process", async () => {
      const id = `sbx-jt-${nonce}-bad`;
      const error = await launchFirecracker({
        binary: firecrackerBin!,
        id,
        args: ["--no-such-flag"],
        jail: {
          jailerBinary: jailerBin!,
          uid: UID,
          gid: UID,
          chrootBaseDir: base,
          parentCgroup,
          cgroupVersion: 1,
          cgroups: { "pids.max": 16 },
        },
      }).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: "EXITED_BEFORE_READY" });
      expect((error as { output: string[] }).output.join("\n")).toMatch(/no-such-flag/);
      expect(entries(join(base, "firecracker"))).toEqual([]);
      expect(cgroupChildren(parentCgroup)).toEqual([]);
      expect(firecrackerPids(id)).toEqual([]);
    });

    it("aborting a jailed VM's signal discards it: Firecracker and its namespace gone, chroot and cgroups removed", async () => {
      const id = `sbx-jt-${nonce}-abort`;
      const controller = new AbortController();
      const fc = await launchFirecracker({
        binary: firecrackerBin!,
        id,
        signal: controller.signal,
        jail: {
          jailerBinary: jailerBin!,
          uid: UID,
          gid: UID,
          chrootBaseDir: base,
          parentCgroup,
          cgroupVersion: 1,
          cgroups: { "pids.max": 16 },
        },
      });
      expect(firecrackerPids(id)).toEqual([fc.pid]);
      controller.abort();
      // kill() is idempotent: this awaits the discard the abort started.
      expect((await fc.kill()).signal).toBe("SIGTERM");
      expect(firecrackerPids(id)).toEqual([]);
      expect(entries(join(base, "firecracker"))).toEqual([]);
      expect(cgroupChildren(parentCgroup)).toEqual([]);
    });

    it("cgroup v2: a jailed VM lands in its own v2 cgroup with the limit set, removed at disposal (hugetlb: the one controller this hybrid host's v2 tree offers)", async (context) => {
      const v2 = (await readCgroupMounts()).find((m) => m.version === 2);
      if (!v2?.controllers.includes("hugetlb") || !existsSync("/sys/kernel/mm/hugepages/hugepages-2048kB")) {
        context.skip("no cgroup2 hierarchy offering hugetlb with 2 MiB pages here");
      }
      const id = `sbx-jt-${nonce}-v2`;
      const fc = await launchFirecracker({
        binary: firecrackerBin!,
        id,
        jail: {
          jailerBinary: jailerBin!,
          uid: UID,
          gid: UID,
          chrootBaseDir: base,
          parentCgroup,
          cgroupVersion: 2,
          cgroups: { "hugetlb.2MB.max": 0 },
        },
      });
      const cgroupDir = join(v2!.path, parentCgroup, id);
      try {
        expect(fc.jail!.cgroupVersion).toBe(2);
        expect(fc.jail!.cgroupDirs).toEqual([cgroupDir]);
        expect(readFileSync(join(cgroupDir, "hugetlb.2MB.max"), "utf8").trim()).toBe("0");
        expect(readFileSync(join(cgroupDir, "cgroup.procs"), "utf8").split("\n")).toContain(String(fc.pid));
        expect(readFileSync(`/proc/${fc.pid}/cgroup`, "utf8")).toContain(`0::/${parentCgroup}/${id}\n`);
      } finally {
        await fc[Symbol.asyncDispose]();
      }
      expect(existsSync(cgroupDir)).toBe(false);
      expect(entries(join(base, "firecracker"))).toEqual([]);
    });

    it("boots jailed (uid, chroot, pid and network namespace, cgroups), snapshots, and a second jail restores it; disposal leaves nothing", async () => {
      const prefix = `sbx-jt-${nonce}-`;
      const jail = {
        jailerBinary: jailerBin!,
        uid: UID,
        gid: UID,
        chrootBaseDir: base,
        parentCgroup,
        cgroupVersion: 1 as const,
        cgroups: { "cpu.cfs_quota_us": 50_000, "memory.limit_in_bytes": 512 * 1024 * 1024, "pids.max": 64 },
        netns: `/var/run/netns/${netns}`,
      };
      const snapshotPath = join(dir, "vmstate");
      const memPath = join(dir, "mem");

      const first = await launchFirecracker({
        binary: firecrackerBin!,
        id: `${prefix}1`,
        logPath: join(dir, "fc1.log"),
        jail: { ...jail, files: { kernel: guestPath } },
      });
      let lastBefore: TestGuestProgress;
      try {
        const j = first.jail!;
        // The kernel is a hard link, not a copy.
        expect(statSync(j.hostPath("/kernel")).ino).toBe(statSync(guestPath).ino);
        // Firecracker runs as the jail's uid/gid, chrooted, in its own pid namespace and in the netns.
        expect(statusField(first.pid, "Uid").split(/\s+/)).toEqual([
          String(UID),
          String(UID),
          String(UID),
          String(UID),
        ]);
        expect(statusField(first.pid, "Gid").split(/\s+/)[0]).toBe(String(UID));
        // The jailer pivots into the chroot in a mount namespace of its own: its root is the chroot.
        expect(statSync(`/proc/${first.pid}/root/kernel`).ino).toBe(statSync(guestPath).ino);
        expect(existsSync(`/proc/${first.pid}/root/etc/passwd`)).toBe(false);
        expect(readlinkSync(`/proc/${first.pid}/ns/pid`)).not.toBe(readlinkSync("/proc/self/ns/pid"));
        expect(statusField(first.pid, "NSpid").split(/\s+/)).toHaveLength(2);
        expect(statSync(`/proc/${first.pid}/ns/net`).ino).toBe(statSync(`/var/run/netns/${netns}`).ino);
        // Its cgroups carry the limits and hold it.
        expect(j.cgroupDirs).toEqual(
          ["cpu", "memory", "pids"].map((c) => join("/sys/fs/cgroup", c, parentCgroup, `${prefix}1`)),
        );
        expect(readFileSync(join(j.cgroupDirs[0]!, "cpu.cfs_quota_us"), "utf8").trim()).toBe("50000");
        expect(readFileSync(join(j.cgroupDirs[1]!, "memory.limit_in_bytes"), "utf8").trim()).toBe(
          String(512 * 1024 * 1024),
        );
        expect(readFileSync(join(j.cgroupDirs[2]!, "pids.max"), "utf8").trim()).toBe("64");
        for (const cgroup of j.cgroupDirs) {
          expect(readFileSync(join(cgroup, "cgroup.procs"), "utf8").split("\n")).toContain(String(first.pid));
        }
        expect(firecrackerPids(prefix)).toEqual([first.pid]);

        await first.client.putGuestBootSource({ kernel_image_path: "/kernel", boot_args: "console=ttyS0" });
        await first.client.putMachineConfiguration({ vcpu_count: 1, mem_size_mib: 128 });
        await first.client.createSyncAction({ action_type: "InstanceStart" });
        await first.waitForConsole(TEST_GUEST_READY_MARKER, { timeoutMs: 10_000 });
        await first.waitForConsole(/^SBX-GUEST iter=([2-9]|\d\d+) /, { timeoutMs: 20_000 });
        await first.client.patchVm({ state: "Paused" });
        await settle(200);
        const seen = progressLines(first.console.lines());
        lastBefore = seen.at(-1)!;
        await first.client.createSnapshot({
          snapshot_type: "Full",
          snapshot_path: "/vmstate",
          mem_file_path: "/mem",
        });
        // Firecracker wrote them inside its chroot, as its uid; keep them past the jail.
        expect(statSync(j.hostPath("/mem")).uid).toBe(UID);
        await link(j.hostPath("/vmstate"), snapshotPath);
        await link(j.hostPath("/mem"), memPath);
      } finally {
        // Paused: SIGTERM at once, reported as Firecracker's own signal (not the init's 128 + n).
        expect(await first.kill({ graceMs: 2000 })).toEqual({ exitCode: null, signal: "SIGTERM" });
      }
      // The log was hard-linked into the jail: Firecracker's lines are in the host file.
      expect(readFileSync(join(dir, "fc1.log"), "utf8")).toMatch(/Running Firecracker v\d+/);
      // Disposal removed the VM's directory and its cgroups; the process and its namespace are gone.
      expect(existsSync(join(base, "firecracker", `${prefix}1`))).toBe(false);
      expect(cgroupChildren(parentCgroup)).toEqual([]);
      expect(firecrackerPids(prefix)).toEqual([]);

      const second = await launchFirecracker({
        binary: firecrackerBin!,
        id: `${prefix}2`,
        logPath: join(dir, "fc2.log"),
        jail: { ...jail, files: { vmstate: snapshotPath, mem: memPath } },
      });
      try {
        const since = second.console.position;
        await second.client.loadSnapshot({
          snapshot_path: "/vmstate",
          mem_backend: { backend_type: "File", backend_path: "/mem" },
          resume_vm: true,
        });
        const next = await second.waitForConsole(/^SBX-GUEST iter=\d+ sum=[0-9a-f]{8}$/, {
          timeoutMs: 20_000,
          since,
        });
        const progress = parseTestGuestLine(next.line.text)!;
        expect(progress.iteration).toBeGreaterThan(lastBefore!.iteration);
        expect(progress.checksum).toBe(expectedGuestChecksums(progress.iteration)[progress.iteration - 1]);
        expect(second.console.lines().includes(TEST_GUEST_READY_MARKER)).toBe(false);
      } finally {
        await second[Symbol.asyncDispose]();
      }
      expect(entries(join(base, "firecracker"))).toEqual([]);
      expect(cgroupChildren(parentCgroup)).toEqual([]);
      expect(firecrackerPids(prefix)).toEqual([]);
      // The files placed in the jails were links: the originals are still there.
      expect(statSync(memPath).size).toBe(128 * 1024 * 1024);
    });
  },
);
