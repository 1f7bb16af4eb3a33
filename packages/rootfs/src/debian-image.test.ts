import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { lstatSync, readdirSync, readFileSync, readlinkSync, realpathSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { readOciLayout } from "./oci-layout.ts";
import { DEBIAN_SUITE, debianImageUnavailable, debianMinbaseLayout } from "./test-debian-image.ts";
import { tempDir } from "./test-oci-helpers.ts";
import { unpackImage } from "./unpack.ts";

const unavailable = await debianImageUnavailable();
if (unavailable) console.log(`Debian minbase image test skipped: ${unavailable}`);
const hostArch = process.arch === "arm64" ? "arm64" : "amd64";

/** name → type, mode, owner, mtime, size, link target or content hash: the fields both unpackers must agree on. */
function describeTree(root: string): Map<string, string> {
  const result = new Map<string, string>();
  const walk = (relative: string) => {
    for (const name of readdirSync(join(root, relative))) {
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
      const ours = describeTree(dest);
      const theirs = describeTree(join(bundle, "rootfs"));
      const differences = [...new Set([...ours.keys(), ...theirs.keys()])]
        .filter((path) => ours.get(path) !== theirs.get(path))
        .map((path) => `${path}: ours=${ours.get(path)} umoci=${theirs.get(path)}`);
      expect(differences).toEqual([]);
      expect(ours.size).toBe(theirs.size);
    });
  },
);
