import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { chmod, chown, link, mkdir, mkdtemp, readdir, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { RootfsError } from "./errors.ts";
import { buildExt4Image, type Ext4Progress, e2fsckSucceeded, estimateContent, repairExt4 } from "./ext4.ts";
import { injectGuestFiles } from "./guest-files.ts";
import { CAP_NET_RAW, capabilityV2, sampleAccessAcl } from "./test-xattr-tar.ts";
import { ext4List, ext4ReadFile, ext4Stat } from "./testing/index.ts";
import { parsePosixAcl } from "./xattr.ts";

const isRoot = process.getuid?.() === 0;
let base: string;
let src: string;
beforeEach(async () => {
  base = await mkdtemp(join(tmpdir(), "sbx-ext4-test-"));
  src = join(base, "src");
  await mkdir(src);
});
afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

const longTarget = `/usr/lib/${"deeply/".repeat(12)}target`;

async function sampleTree(): Promise<void> {
  await mkdir(join(src, "etc"));
  await mkdir(join(src, "usr/bin"), { recursive: true });
  await mkdir(join(src, "empty"));
  await writeFile(join(src, "etc/hostname"), "sbx\n");
  await chmod(join(src, "etc/hostname"), 0o640);
  await writeFile(join(src, "usr/bin/tool"), Buffer.alloc(200_000, 7));
  await chmod(join(src, "usr/bin/tool"), 0o4755);
  await link(join(src, "usr/bin/tool"), join(src, "usr/bin/tool-hardlink"));
  await symlink("usr/bin", join(src, "bin"));
  await symlink(longTarget, join(src, "slowlink"));
  execFileSync("mkfifo", [join(src, "fifo")]);
  if (isRoot) {
    await chown(join(src, "etc/hostname"), 1000, 1001);
    await chown(join(src, "empty"), 0, 42);
  }
}

async function tempLeftovers(): Promise<string[]> {
  return (await readdir(base)).filter((n) => n.includes(".tmp-"));
}

describe("buildExt4Image", () => {
  it("writes files, modes, owners, symlinks and hard links, checked with debugfs", async () => {
    await sampleTree();
    const output = join(base, "rootfs.ext4");
    const progress: Ext4Progress[] = [];
    const fdsBefore = readdirSync("/proc/self/fd").length;
    const result = await buildExt4Image({
      sourceDir: src,
      output,
      size: "auto",
      label: "sbx-root",
      onProgress: (p) => progress.push(p),
    });
    expect(result.path).toBe(output);
    expect((await stat(output)).size).toBe(result.sizeBytes);
    expect(result.forcedRepair).toBe(false);
    expect(result.checks.map((c) => `${c.args[0]}=${c.code}`)).toEqual(["-pf=0", "-fn=0"]);
    expect(await tempLeftovers()).toEqual([]);
    expect(readdirSync("/proc/self/fd").length).toBe(fdsBefore);

    expect(await ext4List(output, "/")).toEqual([
      "bin",
      "empty",
      "etc",
      "fifo",
      "lost+found",
      "slowlink",
      "usr",
    ]);
    expect(await ext4Stat(output, "/etc/hostname")).toMatchObject({
      type: "regular",
      mode: 0o640,
      size: 4,
      ...(isRoot ? { uid: 1000, gid: 1001 } : {}),
    });
    expect((await ext4ReadFile(output, "/etc/hostname")).toString()).toBe("sbx\n");
    const tool = await ext4Stat(output, "/usr/bin/tool");
    expect(tool).toMatchObject({ type: "regular", mode: 0o4755, size: 200_000, links: 2 });
    expect((await ext4Stat(output, "/usr/bin/tool-hardlink")).inode).toBe(tool.inode);
    expect(await ext4Stat(output, "/bin")).toMatchObject({ type: "symlink", linkTarget: "usr/bin" });
    expect(await ext4Stat(output, "/slowlink")).toMatchObject({ type: "symlink", linkTarget: longTarget });
    expect((await ext4Stat(output, "/fifo")).type).toBe("FIFO");
    if (isRoot)
      expect(await ext4Stat(output, "/empty")).toMatchObject({ type: "directory", uid: 0, gid: 42 });
    const label = execFileSync("dumpe2fs", ["-h", output], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    });
    expect(label).toMatch(/Filesystem volume name:\s+sbx-root/);

    expect(progress.map((p) => p.phase).filter((p, i, all) => all.indexOf(p) === i)).toEqual([
      "scan",
      "mkfs",
      "check",
      "done",
    ]);
    expect(progress.at(-1)).toEqual({ phase: "done", bytes: 200_004, entries: 10 });
  });

  it("sizes 'auto' images for many small files by counting inodes", async () => {
    for (let d = 0; d < 20; d++) {
      await mkdir(join(src, `d${d}`));
      await Promise.all(
        Array.from({ length: 300 }, (_, f) => writeFile(join(src, `d${d}`, `f${f}`), `${d}/${f}`)),
      );
    }
    const estimate = await estimateContent(src);
    expect(estimate.inodes).toBe(1 + 20 + 6000);
    const result = await buildExt4Image({ sourceDir: src, output: join(base, "many.ext4") });
    expect(result.inodes).toBeGreaterThan(6021);
    expect(await ext4List(join(base, "many.ext4"), "/d19")).toHaveLength(300);
  });

  it("fails on a too-small explicit size and leaves neither output nor temp file", async () => {
    await writeFile(join(src, "big"), Buffer.alloc(8 * 1024 * 1024, 1));
    const output = join(base, "small.ext4");
    const error = await buildExt4Image({ sourceDir: src, output, size: 4 * 1024 * 1024 }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(RootfsError);
    expect((error as RootfsError).code).toBe("EXT4_BUILD_FAILED");
    await expect(stat(output)).rejects.toThrow(/ENOENT/);
    expect(await tempLeftovers()).toEqual([]);
  });

  it("validates options", async () => {
    await expect(
      buildExt4Image({ sourceDir: src, output: join(base, "x"), size: 1000 }),
    ).rejects.toMatchObject({
      code: "INVALID_OPTIONS",
    });
    await expect(
      buildExt4Image({ sourceDir: src, output: join(base, "x"), label: "a label with spaces" }),
    ).rejects.toMatchObject({
      code: "INVALID_OPTIONS",
    });
    await expect(
      buildExt4Image({ sourceDir: join(src, "missing"), output: join(base, "x") }),
    ).rejects.toMatchObject({ code: "INVALID_OPTIONS", details: { sourceDir: join(src, "missing") } });
    expect(existsSync(join(base, "x"))).toBe(false);
    expect(await tempLeftovers()).toEqual([]);
  });

  it("builds an injected guest tree whose init and applet links debugfs can see", async () => {
    await mkdir(join(src, "etc"));
    await injectGuestFiles({ root: src, busybox: "/bin/busybox", workload: ["/bin/sh"], systemd: false });
    const output = join(base, "guest.ext4");
    await buildExt4Image({ sourceDir: src, output });
    expect(await ext4Stat(output, "/.sbx/init")).toMatchObject({
      type: "regular",
      mode: 0o755,
      ...(isRoot ? { uid: 0, gid: 0 } : {}),
    });
    expect(await ext4Stat(output, "/.sbx/bin/sh")).toMatchObject({ type: "symlink", linkTarget: "busybox" });
    expect((await ext4Stat(output, "/.sbx/bin/busybox")).size).toBe((await stat("/bin/busybox")).size);
    expect((await ext4Stat(output, "/tmp")).mode).toBe(0o1777);
  });
});

const hasSetfattr = ["/usr/bin/setfattr", "/bin/setfattr"].some((path) => existsSync(path));
const xattrReason =
  !isRoot || !hasSetfattr
    ? " (skipped: needs root and setfattr for security.* and trusted.*: apt install attr)"
    : "";

/** The value of one xattr in the image, as debugfs's ea_get gives it (ACLs in the xattr format). */
function imageXattr(image: string, path: string, name: string): Buffer {
  const out = join(base, "ea-value");
  execFileSync("debugfs", ["-R", `ea_get -f ${out} ${path} ${name}`, image], { stdio: "ignore" });
  const value = readFileSync(out);
  rmSync(out);
  return value;
}

function imageXattrNames(image: string, path: string): string[] {
  const listing = execFileSync("debugfs", ["-R", `ea_list ${path}`, image], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "ignore"],
  });
  return [...listing.matchAll(/^ {2}(\S+) \(\d+\)/gm)].map((match) => match[1]!).sort();
}

describe("buildExt4Image: extended attributes", () => {
  it.skipIf(!!xattrReason)(
    `mkfs.ext4 -d carries every xattr into the image: capabilities, ACLs, user., trusted., security. on files, directories and symlinks${xattrReason}`,
    async () => {
      await mkdir(join(src, "usr/bin"), { recursive: true });
      await writeFile(join(src, "usr/bin/ping"), "p");
      await chmod(join(src, "usr/bin/ping"), 0o755);
      await link(join(src, "usr/bin/ping"), join(src, "usr/bin/ping4"));
      await mkdir(join(src, "srv"));
      await writeFile(join(src, "srv/shared"), "s");
      await symlink("srv/shared", join(src, "link"));
      const capability = capabilityV2(CAP_NET_RAW);
      const set = (path: string, name: string, value: Buffer | string) =>
        execFileSync("setfattr", [
          "-h",
          "-n",
          name,
          "-v",
          `0x${Buffer.from(value).toString("hex")}`,
          join(src, path),
        ]);
      set("usr/bin/ping", "security.capability", capability);
      set("srv/shared", "system.posix_acl_access", sampleAccessAcl(1000));
      set("srv/shared", "user.origin", Buffer.from([0, 1, 2, 255]));
      set("srv", "system.posix_acl_default", sampleAccessAcl(2000));
      set("srv", "trusted.dir", "t");
      set("link", "trusted.link", "on the link");
      set("link", "security.label", "l");

      const output = join(base, "xattrs.ext4");
      await buildExt4Image({ sourceDir: src, output });
      expect(imageXattrNames(output, "/usr/bin/ping")).toEqual(["security.capability"]);
      expect(imageXattr(output, "/usr/bin/ping", "security.capability")).toEqual(capability);
      expect(imageXattr(output, "/usr/bin/ping4", "security.capability")).toEqual(capability);
      expect(imageXattrNames(output, "/srv/shared")).toEqual(["system.posix_acl_access", "user.origin"]);
      // debugfs hands ACLs back in the xattr format, with 0 for the unused ids of owner/group/other.
      expect(parsePosixAcl(imageXattr(output, "/srv/shared", "system.posix_acl_access"))).toEqual(
        parsePosixAcl(sampleAccessAcl(1000)),
      );
      expect(imageXattr(output, "/srv/shared", "user.origin")).toEqual(Buffer.from([0, 1, 2, 255]));
      expect(imageXattrNames(output, "/srv")).toEqual(["system.posix_acl_default", "trusted.dir"]);
      expect(parsePosixAcl(imageXattr(output, "/srv", "system.posix_acl_default"))).toEqual(
        parsePosixAcl(sampleAccessAcl(2000)),
      );
      expect(imageXattrNames(output, "/link")).toEqual(["security.label", "trusted.link"]);
      expect(imageXattrNames(output, "/srv/shared")).not.toContain("trusted.link");

      // And the kernel reads them back from a loop mount: the guest sees what the tree had.
      const mountpoint = join(base, "mnt");
      await mkdir(mountpoint);
      // Only mounts under this test's directory: other tests mount elsewhere on the host meanwhile.
      const mounts = () =>
        readFileSync("/proc/self/mountinfo", "utf8")
          .split("\n")
          .filter((line) => (line.split(" ")[4] ?? "").startsWith(`${base}/`)).length;
      const mountsBefore = mounts();
      execFileSync("mount", ["-o", "ro,loop", output, mountpoint]);
      expect(mounts()).toBe(mountsBefore + 1);
      try {
        const dump = (root: string) =>
          execFileSync("getfattr", ["-R", "-P", "-h", "-d", "-m", "-", "-e", "hex", "."], {
            cwd: root,
            encoding: "utf8",
          })
            .split("\n\n")
            .map((block) => block.trim())
            .filter((block) => block !== "" && !/^# file: (\.\/)?lost\+found/.test(block))
            .sort()
            .join("\n\n")
            .trim();
        expect(dump(mountpoint)).toBe(dump(src));
        expect(dump(mountpoint)).toContain("security.capability=0x");
      } finally {
        execFileSync("umount", [mountpoint]);
      }
      expect(mounts()).toBe(mountsBefore);
    },
  );
});

describe("repairExt4", () => {
  async function image(): Promise<string> {
    await writeFile(join(src, "provision.sh"), '#!/bin/sh\nrm -f "$0"\n');
    await mkdir(join(src, "etc"));
    await writeFile(join(src, "etc/a"), "a");
    const output = join(base, "img.ext4");
    await buildExt4Image({ sourceDir: src, output, size: 32 * 1024 * 1024 });
    return output;
  }
  function debugfsWrite(path: string, request: string): void {
    execFileSync("debugfs", ["-w", "-R", request, path], { stdio: "ignore" });
  }

  it("falls back to e2fsck -fy when preen cannot repair (an unattached in-use inode), then checks clean", async () => {
    const path = await image();
    // The script's directory entry is gone while its inode is still allocated, as after a crash.
    debugfsWrite(path, "unlink /provision.sh");
    const result = await repairExt4(path);
    expect(result.forcedRepair).toBe(true);
    expect(result.checks[0]).toMatchObject({ args: ["-pf", path], code: 4 });
    expect(result.checks[0]?.output).toMatch(/UNEXPECTED INCONSISTENCY/);
    expect(result.checks[1]?.args[0]).toBe("-fy");
    expect(e2fsckSucceeded(result.checks[1]?.code ?? null)).toBe(true);
    expect(result.checks.at(-1)).toMatchObject({ args: ["-fn", path], code: 0 });
    expect(execFileSync("e2fsck", ["-fn", path], { stdio: "pipe" }).toString()).not.toMatch(/UNEXPECTED/);
  });

  it("repairs an orphan inode list with preen alone", async () => {
    const path = await image();
    const { inode } = await ext4Stat(path, "/provision.sh");
    debugfsWrite(path, "unlink /provision.sh");
    debugfsWrite(path, `set_super_value last_orphan ${inode}`);
    debugfsWrite(path, `sif <${inode}> links_count 0`);
    const result = await repairExt4(path);
    expect(result.forcedRepair).toBe(false);
    expect(result.checks.map((c) => c.args[0])).toEqual(["-pf", "-fn"]);
    expect(result.checks[0]?.output).toMatch(/orphaned inode/i);
    expect(result.checks[0]?.code).toBeLessThanOrEqual(2);
  });

  it("force-fixes a root inode that is no longer a directory", async () => {
    const path = await image();
    debugfsWrite(path, "sif <2> mode 0100644");
    const result = await repairExt4(path);
    expect(result.forcedRepair).toBe(true);
    expect(result.checks.at(-1)?.code).toBe(0);
    expect((await ext4Stat(path, "/")).type).toBe("directory");
  });

  it("reports a file that is not ext4 at all as a check failure", async () => {
    const path = join(base, "garbage.img");
    await writeFile(path, Buffer.alloc(1024 * 1024, 0xab));
    await expect(repairExt4(path)).rejects.toMatchObject({ code: "EXT4_CHECK_FAILED" });
    await expect(repairExt4(join(base, "missing.img"))).rejects.toMatchObject({ code: "INVALID_OPTIONS" });
  });
});
