// cgroup v2 under the real jailer, as far as this kind of host allows: a hybrid host binds cpu, memory
// and pids to v1 hierarchies and its cgroup2 tree offers only what is left (here: hugetlb). A v2 jail
// with a limit that tree offers runs, in its v2 cgroup, with the limit set, and leaves nothing; a v2
// limit the tree does not offer is refused with a typed error before anything of the jail exists.
// What a pure v2 host adds (cpu.max, memory.max, pids.max through the jailer) cannot run here.
import { readFileSync, rmdirSync, statSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readCgroupMounts } from "./cgroups.ts";
import { launchFirecracker } from "./launcher.ts";
import { entries } from "./test-jail-counts.ts";
import { childPids } from "./test-process-counts.ts";
import { realFirecracker } from "./testing/real-firecracker.ts";

const fc = realFirecracker();
const mounts = await readCgroupMounts().catch(() => []);
const v2 = mounts.find((m) => m.version === 2);
const skipReason =
  fc.skipReason ??
  fc.jailerSkipReason ??
  (!v2
    ? "no cgroup2 hierarchy is mounted"
    : !v2.controllers.includes("hugetlb")
      ? "cgroup2 offers no hugetlb"
      : undefined);
if (skipReason) console.log(`[fc-client] jailer cgroup v2 tests skipped: ${skipReason}`);

const nonce = `${process.pid.toString(36)}${Date.now().toString(36).slice(-4)}`;
const UID = 64_126;
const HUGETLB_LIMIT = 64 * 1024 * 1024;

describe.skipIf(skipReason !== undefined)(
  `real jailer, cgroup v2${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let dir: string;
    const parentCgroup = `sbx-v2-${nonce}`;
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "sbx-v2-"));
    });
    afterAll(async () => {
      try {
        // The shared parent is kept by the launcher by design; this test's own goes.
        rmdirSync(join(v2!.path, parentCgroup));
      } catch {
        // not created, or already gone
      }
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it("a v2 jail with what the v2 tree offers (hugetlb) runs in its v2 cgroup with the limit, and leaves nothing", async () => {
      const children = childPids();
      const id = `sbx-v2-${nonce}`;
      const cgroupDir = join(v2!.path, parentCgroup, id);
      {
        await using vm = await launchFirecracker({
          binary: fc.binary!,
          id,
          jail: {
            jailerBinary: fc.jailer!,
            uid: UID,
            gid: UID,
            chrootBaseDir: join(dir, "j"),
            cgroupVersion: 2,
            cgroups: { "hugetlb.2MB.max": HUGETLB_LIMIT },
            parentCgroup,
          },
        });
        expect(vm.jail?.cgroupVersion).toBe(2);
        expect(vm.jail?.cgroupDirs).toEqual([cgroupDir]);
        expect(readFileSync(join(cgroupDir, "hugetlb.2MB.max"), "utf8").trim()).toBe(String(HUGETLB_LIMIT));
        expect(readFileSync(join(cgroupDir, "cgroup.procs"), "utf8").split("\n")).toContain(String(vm.pid));
        // Its v2 membership, as the process itself sees it (`0::/<path>`).
        expect(readFileSync(`/proc/${vm.pid}/cgroup`, "utf8")).toContain(`0::/${parentCgroup}/${id}`);
        expect((await vm.client.describeInstance()).state).toBe("Not started");
      }
      expect(() => statSync(cgroupDir)).toThrow();
      expect(entries(join(dir, "j", "firecracker"))).toEqual([]);
      expect(childPids()).toEqual(children);
    }, 60_000);

    it("a v2 limit the v2 tree does not offer is CGROUP_UNAVAILABLE, naming what it offers, before any jail exists", async () => {
      const error = await launchFirecracker({
        binary: fc.binary!,
        id: `sbx-v2m-${nonce}`,
        jail: {
          jailerBinary: fc.jailer!,
          uid: UID,
          gid: UID,
          chrootBaseDir: join(dir, "j"),
          cgroupVersion: 2,
          cgroups: { "memory.max": 256 * 1024 * 1024, "pids.max": 64 },
          parentCgroup,
        },
      }).catch((e: unknown) => e);
      expect(error).toMatchObject({ name: "FirecrackerLaunchError", code: "CGROUP_UNAVAILABLE" });
      expect((error as Error).message).toMatch(/memory, pids/);
      expect((error as Error).message).toMatch(/hugetlb/);
      expect(entries(join(dir, "j", "firecracker"))).toEqual([]);
    });
  },
);
