// Disk clones on real file systems: a loop-mounted XFS with reflink shares blocks (a 64 MiB disk costs
// next to no space), a loop-mounted ext4 gets a sparse copy with the same bytes and holes.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, stat, statfs, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cloneFile, directoryClones } from "./disk-clone.ts";

const hasTool = (tool: string) =>
  ["/usr/sbin", "/sbin", "/usr/bin"].some((dir) => existsSync(join(dir, tool)));
const skipReason =
  process.getuid?.() !== 0
    ? "needs root to loop-mount file systems"
    : !hasTool("mkfs.xfs")
      ? "needs mkfs.xfs (Debian xfsprogs)"
      : !hasTool("mkfs.ext4")
        ? "needs mkfs.ext4"
        : undefined;
if (skipReason) console.log(`[orchestrator] disk clone tests skipped: ${skipReason}`);

// Only what this test made counts: other test files mount namespaces and jails on the same host meanwhile.
const mountsUnder = (root: string) =>
  readFileSync("/proc/self/mounts", "utf8")
    .split("\n")
    .filter((line) => line.split(" ")[1]?.startsWith(root)).length;
const loopsOf = (root: string) =>
  execFileSync("losetup", ["-a"], { encoding: "utf8" })
    .split("\n")
    .filter((line) => line.includes(root)).length;

async function freeBytes(path: string): Promise<number> {
  const info = await statfs(path);
  return info.bavail * info.bsize;
}

describe.skipIf(skipReason !== undefined)(
  `disk clones${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let dir: string;
    const mounted: string[] = [];

    async function loopMount(kind: "xfs" | "ext4"): Promise<string> {
      const image = join(dir, `${kind}.img`);
      await writeFile(image, "");
      execFileSync("truncate", ["-s", "512M", image]);
      execFileSync(
        kind === "xfs" ? "mkfs.xfs" : "mkfs.ext4",
        kind === "xfs" ? ["-q", "-m", "reflink=1", image] : ["-q", "-F", image],
      );
      const target = join(dir, kind);
      await mkdir(target);
      execFileSync("mount", ["-o", "loop", image, target]);
      mounted.push(target);
      return target;
    }

    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "sbx-clone-"));
    });
    afterAll(async () => {
      for (const target of mounted.reverse()) execFileSync("umount", [target]);
      expect(mountsUnder(dir)).toBe(0);
      expect(loopsOf(dir)).toBe(0);
      await rm(dir, { recursive: true, force: true });
    });

    it("XFS with reflink: a clone shares every block, and writing one copy leaves the other as it was", async () => {
      const xfs = await loopMount("xfs");
      expect(await directoryClones(xfs)).toBe(true);
      const disk = join(xfs, "rootfs.ext4");
      await writeFile(disk, Buffer.alloc(64 * 1024 * 1024, 0x5a));
      execFileSync("sync");
      const free = await freeBytes(xfs);
      expect(await cloneFile(disk, join(xfs, "clone.ext4"))).toBe("reflink");
      execFileSync("sync");
      // 64 MiB cloned for less than 1 MiB of space: the blocks are shared, not copied.
      expect(free - (await freeBytes(xfs))).toBeLessThan(1024 * 1024);
      await writeFile(join(xfs, "clone.ext4"), Buffer.from("changed"), { flag: "r+" });
      expect(readFileSync(disk).subarray(0, 7).toString()).toBe("ZZZZZZZ");
      expect(readFileSync(join(xfs, "clone.ext4")).subarray(0, 7).toString()).toBe("changed");
      // Never replaces a file that exists.
      await expect(cloneFile(disk, join(xfs, "clone.ext4"))).rejects.toMatchObject({ code: "EEXIST" });
      expect(readFileSync(join(xfs, "clone.ext4")).subarray(0, 7).toString()).toBe("changed");
    });

    it("ext4 (no reflink): a sparse copy with the same bytes and its holes kept", async () => {
      const ext4 = await loopMount("ext4");
      expect(await directoryClones(ext4)).toBe(false);
      const disk = join(ext4, "rootfs.ext4");
      await writeFile(disk, "");
      execFileSync("truncate", ["-s", "256M", disk]);
      await writeFile(disk, Buffer.alloc(4096, 1), { flag: "r+" });
      expect(await cloneFile(disk, join(ext4, "copy.ext4"))).toBe("sparse-copy");
      const copy = await stat(join(ext4, "copy.ext4"));
      expect(copy.size).toBe(256 * 1024 * 1024);
      expect(copy.blocks * 512).toBeLessThan(1024 * 1024);
      expect(readFileSync(join(ext4, "copy.ext4")).subarray(0, 4096).equals(Buffer.alloc(4096, 1))).toBe(
        true,
      );
      expect(readdirSync(ext4).filter((name) => name.startsWith(".clone-probe"))).toEqual([]);
    });
  },
);
