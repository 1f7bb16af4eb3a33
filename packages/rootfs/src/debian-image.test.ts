import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, realpathSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { buildExt4Image } from "./ext4.ts";
import { readOciLayout } from "./oci-layout.ts";
import {
  DEBIAN_EXTRA_XATTRS,
  DEBIAN_SUITE,
  debianImageUnavailable,
  debianMinbaseLayout,
} from "./test-debian-image.ts";
import { tempDir } from "./test-oci-helpers.ts";
import { unpackImage } from "./unpack.ts";

const unavailable = await debianImageUnavailable();
if (unavailable) console.log(`Debian minbase image test skipped: ${unavailable}`);
const hostArch = process.arch === "arm64" ? "arm64" : "amd64";

/** name → type, mode, owner, mtime, size, link target or content hash: the fields both unpackers must agree on. */
function describeTree(root: string, exclude: readonly string[] = []): Map<string, string> {
  const result = new Map<string, string>();
  const walk = (relative: string) => {
    for (const name of readdirSync(join(root, relative))) {
      if (!relative && exclude.includes(name)) continue;
      const path = relative ? `${relative}/${name}` : name;
      const host = join(root, path);
      const stat = lstatSync(host);
      let detail: string;
      if (stat.isSymbolicLink()) detail = `link ${readlinkSync(host)}`;
      else if (stat.isFile())
        detail = `file ${stat.size} ${createHash("sha1").update(readFileSync(host)).digest("hex")}`;
      else if (stat.isDirectory()) detail = "dir";
      else detail = `special ${stat.mode >> 12}`;
      result.set(
        path,
        `${detail} mode=${(stat.mode & 0o7777).toString(8)} uid=${stat.uid} gid=${stat.gid} mtime=${Math.floor(stat.mtimeMs / 1000)}`,
      );
      if (stat.isDirectory()) walk(path);
    }
  };
  walk("");
  return result;
}

/**
 * Every xattr of every file, read through the kernel (`getfattr -R -P -h -d -m - -e hex`, which
 * never follows symlinks): path (as getfattr escapes it) → "name=0xvalue" lines.
 */
function xattrsOfTree(root: string, exclude: readonly string[] = []): Map<string, string> {
  const dump = execFileSync("getfattr", ["-R", "-P", "-h", "-d", "-m", "-", "-e", "hex", "."], {
    cwd: root,
    encoding: "utf8",
    maxBuffer: 256 * 1024 * 1024,
  });
  const result = new Map<string, string>();
  for (const block of dump.split("\n\n")) {
    const [header, ...lines] = block.trim().split("\n");
    if (!header?.startsWith("# file: ")) continue;
    const path = header.slice("# file: ".length).replace(/^\.\/?/, "");
    if (exclude.some((name) => path === name || path.startsWith(`${name}/`))) continue;
    result.set(path, lines.sort().join(" "));
  }
  return result;
}

function differencesOf(ours: Map<string, string>, theirs: Map<string, string>): string[] {
  return [...new Set([...ours.keys(), ...theirs.keys()])]
    .filter((path) => ours.get(path) !== theirs.get(path))
    .map((path) => `${path}: ours=${ours.get(path)} umoci=${theirs.get(path)}`);
}

/** Mounts at or under `dir` (other engineers' tests mount elsewhere on the same host meanwhile). */
function mountsUnder(dir: string): number {
  return readFileSync("/proc/self/mountinfo", "utf8")
    .trim()
    .split("\n")
    .filter((line) => {
      const mountpoint = line.split(" ")[4] ?? "";
      return mountpoint === dir || mountpoint.startsWith(`${dir}/`);
    }).length;
}

/** Run `script` with /bin/sh inside `root` (chroot). */
function inChroot(root: string, script: string): { code: number; output: string } {
  try {
    return {
      code: 0,
      output: execFileSync("chroot", [root, "/bin/sh", "-c", script], { encoding: "utf8", stdio: "pipe" }),
    };
  } catch (error) {
    const failure = error as { status: number | null; stdout?: string; stderr?: string };
    return { code: failure.status ?? -1, output: `${failure.stdout ?? ""}${failure.stderr ?? ""}` };
  }
}

describe.skipIf(unavailable !== undefined)(
  `a real distribution image: debootstrap --variant=minbase ${DEBIAN_SUITE} via umoci${unavailable ? ` (skipped: ${unavailable})` : ""}`,
  () => {
    let layoutPath = "";
    beforeAll(async () => {
      layoutPath = await debianMinbaseLayout();
    }, 15 * 60_000);

    it("unpacks to the same tree as umoci, with working merged-/usr symlinks", {
      timeout: 5 * 60_000,
    }, async () => {
      await using tmp = await tempDir();
      const layout = await readOciLayout(layoutPath);
      const dest = join(tmp.path, "root");
      const result = await unpackImage({
        layout,
        platform: hostArch,
        dest,
        tag: DEBIAN_SUITE,
        devices: "create",
      });
      expect(result.entries).toBeGreaterThan(5000);

      for (const [link, target] of [
        ["bin", "usr/bin"],
        ["sbin", "usr/sbin"],
        ["lib", "usr/lib"],
      ]) {
        expect(readlinkSync(join(dest, link!))).toBe(target);
      }
      expect(realpathSync(join(dest, "bin/sh"))).toBe(join(dest, "usr/bin/dash"));
      expect(lstatSync(join(dest, "usr/bin/apt-get")).isFile()).toBe(true);
      // /bin/ls through the symlink, run inside the tree: the dynamic loader (lib64 -> usr/lib64) resolves too.
      const out = execFileSync("chroot", [dest, "/bin/sh", "-c", "ls /bin/ls && dpkg-query -W dpkg"], {
        encoding: "utf8",
      });
      expect(out).toMatch(/^\/bin\/ls\ndpkg\t\d/);

      // The reference: umoci's own unpack of the same image.
      const bundle = join(tmp.path, "bundle");
      execFileSync("umoci", ["unpack", "--image", `${layoutPath}:${DEBIAN_SUITE}`, bundle], {
        stdio: "ignore",
      });
      const umociRoot = join(bundle, "rootfs");
      const ours = describeTree(dest);
      const theirs = describeTree(umociRoot);
      expect(differencesOf(ours, theirs)).toEqual([]);
      expect(ours.size).toBe(theirs.size);

      // xattrs of every file, as umoci applied them, and the ones the image is known to carry.
      const ourXattrs = xattrsOfTree(dest);
      const theirXattrs = xattrsOfTree(umociRoot);
      expect(differencesOf(ourXattrs, theirXattrs)).toEqual([]);
      expect(ourXattrs.get("usr/bin/ping")).toMatch(/^security\.capability=0x/);
      for (const extra of DEBIAN_EXTRA_XATTRS) {
        expect(ourXattrs.get(extra.path)).toContain(`${extra.name}=${extra.value}`);
      }
      expect(result.xattrs.applied).toBe(
        [...ourXattrs.values()].reduce((n, l) => n + l.split(" ").length, 0),
      );
      expect(inChroot(dest, "getcap /usr/bin/ping").output).toContain("cap_net_raw=ep");

      // The ext4 image sbx builds from it, read back through the kernel (a read-only loop mount):
      // the same tree and the same xattrs as umoci's unpack.
      const image = join(tmp.path, "rootfs.ext4");
      await buildExt4Image({ sourceDir: dest, output: image });
      const mountpoint = join(tmp.path, "mnt");
      mkdirSync(mountpoint);
      const mountsBefore = mountsUnder(tmp.path);
      execFileSync("mount", ["-o", "ro,loop", image, mountpoint]);
      expect(mountsUnder(tmp.path)).toBe(mountsBefore + 1);
      try {
        expect(differencesOf(describeTree(mountpoint, ["lost+found"]), theirs)).toEqual([]);
        expect(differencesOf(xattrsOfTree(mountpoint, ["lost+found"]), theirXattrs)).toEqual([]);
        // The image's ping works for a non-root user through its capability alone: this kernel's
        // ping_group_range does not let uid 65534 open ICMP datagram sockets, so without
        // cap_net_raw it fails (the copy without xattrs below shows that it would).
        const pingGroups = readFileSync("/proc/sys/net/ipv4/ping_group_range", "utf8")
          .trim()
          .split(/\s+/)
          .map(Number);
        const datagramPingAllowed = pingGroups[0]! <= 65534 && 65534 <= pingGroups[1]!;
        const ping = inChroot(
          mountpoint,
          "setpriv --reuid=65534 --regid=65534 --clear-groups ping -c1 -W5 127.0.0.1",
        );
        expect(ping.output).toContain("1 received");
        expect(ping.code).toBe(0);
        if (!datagramPingAllowed) {
          const plain = inChroot(
            dest,
            "cp /usr/bin/ping /tmp/ping-plain && setpriv --reuid=65534 --regid=65534 --clear-groups /tmp/ping-plain -c1 -W5 127.0.0.1",
          );
          expect(plain.code).not.toBe(0);
        }
      } finally {
        execFileSync("umount", [mountpoint]);
      }
      expect(mountsUnder(tmp.path)).toBe(mountsBefore);

      // The capability check inside the unpacked root, as a non-root user: the image's own setcap
      // gives a copy of capsh ping's capability set, and the kernel grants it on exec.
      const capsh = inChroot(
        dest,
        [
          "cp /usr/sbin/capsh /tmp/capsh-ping",
          'setcap "$(getcap /usr/bin/ping | cut -d" " -f2)" /tmp/capsh-ping',
          "setpriv --reuid=65534 --regid=65534 --clear-groups /tmp/capsh-ping --print",
        ].join(" && "),
      );
      expect(capsh.output).toMatch(/^Current: cap_net_raw=ep$/m);
      expect(capsh.output).toMatch(/^uid=65534/m);
    });
  },
);
