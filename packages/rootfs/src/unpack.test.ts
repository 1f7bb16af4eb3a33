import { execFileSync } from "node:child_process";
import {
  existsSync,
  lstatSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { RootfsError } from "./errors.ts";
import { readOciLayout } from "./oci-layout.ts";
import { MEDIA_TYPES } from "./oci-schemas.ts";
import { tarArchive } from "./tar-writer.ts";
import { openFdCount, tempDir } from "./test-oci-helpers.ts";
import {
  compress,
  generateRealisticImage,
  sha256Digest,
  writeBlob,
  writeOciLayout,
} from "./testing/fixtures.ts";
import { unpackImage } from "./unpack.ts";

const amd64 = { os: "linux", architecture: "amd64" };
const isRoot = process.getuid?.() === 0;
const hostPlatformArch = () => (process.arch === "arm64" ? "arm64" : "amd64");

describe("unpackImage: layer semantics", () => {
  it("applies gzip, zstd and plain layers in order: files, modes, owners, mtimes, symlinks, hard links", async () => {
    await using tmp = await tempDir();
    const fdsBefore = openFdCount();
    await writeOciLayout({
      dir: join(tmp.path, "layout"),
      images: [
        {
          platform: amd64,
          layers: [
            {
              compression: "gzip",
              entries: [
                { path: "usr/", type: "directory", mode: 0o755, mtime: 1_600_000_000 },
                { path: "usr/bin/", type: "directory", mode: 0o755, mtime: 1_600_000_100 },
                { path: "bin", type: "symlink", linkPath: "usr/bin", mtime: 1_600_000_000 },
                { path: "usr/bin/sh", content: "#!shell\n", mode: 0o755, mtime: 1_600_000_200 },
                { path: "usr/bin/su", content: "su", mode: 0o4755, uid: 0, gid: 0, mtime: 1_600_000_000 },
                { path: "etc/", type: "directory", mode: 0o755 },
                { path: "etc/owned", content: "x", mode: 0o640, uid: 1234, gid: 5678, mtime: 1_500_000_000 },
                { path: "etc/gone", content: "lower" },
                { path: "etc/dir-gone/", type: "directory" },
                { path: "etc/dir-gone/f", content: "lower" },
                { path: "opaque/", type: "directory" },
                { path: "opaque/old", content: "lower" },
                { path: "tmp/", type: "directory", mode: 0o1777, mtime: 1_400_000_000 },
              ],
            },
            {
              compression: "zstd",
              entries: [
                // Written through the merged-/usr symlink: lands in usr/bin.
                { path: "bin/ls", content: "ls", mode: 0o755 },
                { path: "etc/.wh.gone", content: "" },
                { path: "etc/.wh.dir-gone", content: "" },
                { path: "opaque/", type: "directory" },
                { path: "opaque/.wh..wh..opq", content: "" },
                { path: "opaque/new", content: "upper" },
                { path: "usr/bin/sh-link", type: "hardlink", linkPath: "usr/bin/sh" },
                { path: `deep/${"d".repeat(120)}/file-with-a-long-name-${"n".repeat(80)}`, content: "pax" },
              ],
            },
            {
              compression: "none",
              entries: [
                // A same-layer whiteout does not hide what this layer itself adds.
                { path: "etc/fresh", content: "same layer" },
                { path: "etc/.wh.fresh", content: "" },
                {
                  path: "etc/owned",
                  content: "replaced",
                  mode: 0o600,
                  uid: 1234,
                  gid: 5678,
                  mtime: 1_500_000_000,
                },
              ],
            },
          ],
        },
      ],
    });
    const layout = await readOciLayout(join(tmp.path, "layout"));
    const dest = join(tmp.path, "root");
    const progress: number[] = [];
    const result = await unpackImage({
      layout,
      platform: "amd64",
      dest,
      onProgress: (p) => {
        if (p.done) progress.push(p.layerIndex);
      },
    });
    expect(progress).toEqual([0, 1, 2]);
    expect(result.layers).toHaveLength(3);
    expect(result.platform).toMatchObject(amd64);

    expect(readlinkSync(join(dest, "bin"))).toBe("usr/bin");
    expect(readFileSync(join(dest, "usr/bin/ls"), "utf8")).toBe("ls");
    expect(readFileSync(join(dest, "bin/ls"), "utf8")).toBe("ls");
    expect(lstatSync(join(dest, "bin")).isSymbolicLink()).toBe(true);
    expect(statSync(join(dest, "usr/bin/su")).mode & 0o7777).toBe(0o4755);
    expect(statSync(join(dest, "usr/bin/sh")).mtimeMs).toBe(1_600_000_200_000);
    expect(statSync(join(dest, "usr/bin")).mtimeMs).toBe(1_600_000_100_000);
    expect(statSync(join(dest, "tmp")).mode & 0o7777).toBe(0o1777);
    expect(statSync(join(dest, "tmp")).mtimeMs).toBe(1_400_000_000_000);
    expect(statSync(join(dest, "usr/bin/sh-link")).ino).toBe(statSync(join(dest, "usr/bin/sh")).ino);
    expect(readdirSync(join(dest, "etc")).sort()).toEqual(["fresh", "owned"]);
    expect(readdirSync(join(dest, "opaque"))).toEqual(["new"]);
    expect(readFileSync(join(dest, "etc/owned"), "utf8")).toBe("replaced");
    expect(statSync(join(dest, "etc/owned")).mode & 0o7777).toBe(0o600);
    if (isRoot) {
      expect(statSync(join(dest, "etc/owned")).uid).toBe(1234);
      expect(statSync(join(dest, "etc/owned")).gid).toBe(5678);
    }
    expect(
      readFileSync(join(dest, `deep/${"d".repeat(120)}/file-with-a-long-name-${"n".repeat(80)}`), "utf8"),
    ).toBe("pax");
    expect(statSync(dest).mode & 0o777).toBe(0o755);
    expect(readdirSync(tmp.path).sort()).toEqual(["layout", "root"]);
    expect(openFdCount()).toBe(fdsBefore);
  });

  it("keeps what a layer added under an opaque directory, whatever the marker's position", async () => {
    await using tmp = await tempDir();
    await writeOciLayout({
      dir: join(tmp.path, "layout"),
      images: [
        {
          platform: amd64,
          layers: [
            {
              entries: [
                { path: "o/lower", content: "l" },
                { path: "o/sub/lower", content: "l" },
              ],
            },
            {
              entries: [
                { path: "o/sub/upper", content: "u" },
                { path: "o/.wh..wh..opq", content: "" },
              ],
            },
          ],
        },
      ],
    });
    const dest = join(tmp.path, "root");
    await unpackImage({ layout: await readOciLayout(join(tmp.path, "layout")), platform: "amd64", dest });
    expect(readdirSync(join(dest, "o"))).toEqual(["sub"]);
    expect(readdirSync(join(dest, "o/sub"))).toEqual(["upper"]);
  });

  it("creates fifos and (as root, by policy) device nodes, and skips devices by default", async () => {
    await using tmp = await tempDir();
    await writeOciLayout({
      dir: join(tmp.path, "layout"),
      images: [
        {
          platform: amd64,
          layers: [
            {
              entries: [
                { path: "dev/", type: "directory" },
                { path: "dev/null", type: "char-device", deviceMajor: 1, deviceMinor: 3, mode: 0o666 },
                { path: "dev/loop9", type: "block-device", deviceMajor: 7, deviceMinor: 9, mode: 0o660 },
                { path: "run/pipe", type: "fifo", mode: 0o600 },
              ],
            },
          ],
        },
      ],
    });
    const layout = await readOciLayout(join(tmp.path, "layout"));
    const skipped = await unpackImage({ layout, platform: "amd64", dest: join(tmp.path, "a") });
    expect(skipped.skipped.map((s) => s.entry).sort()).toEqual(["dev/loop9", "dev/null"]);
    expect(lstatSync(join(tmp.path, "a/run/pipe")).isFIFO()).toBe(true);
    expect(readdirSync(join(tmp.path, "a/dev"))).toEqual([]);
    if (isRoot) {
      await unpackImage({ layout, platform: "amd64", dest: join(tmp.path, "b"), devices: "create" });
      const device = lstatSync(join(tmp.path, "b/dev/null"));
      expect(device.isCharacterDevice()).toBe(true);
      expect(device.rdev).toBe((1 << 8) | 3);
      expect(lstatSync(join(tmp.path, "b/dev/loop9")).isBlockDevice()).toBe(true);
    } else {
      console.log("device creation not checked (skipped: not running as root)");
    }
    await expect(
      unpackImage({ layout, platform: "amd64", dest: join(tmp.path, "c"), fifos: "refuse" }),
    ).rejects.toMatchObject({ code: "LAYER_UNSAFE_ENTRY", details: { entry: "run/pipe" } });
  });

  it("refuses a destination that is not empty and leaves it alone", async () => {
    await using tmp = await tempDir();
    await writeOciLayout({
      dir: join(tmp.path, "layout"),
      images: [{ platform: amd64, layers: [{ entries: [{ path: "f", content: "x" }] }] }],
    });
    const dest = join(tmp.path, "root");
    await mkdir(dest);
    writeFileSync(join(dest, "keep"), "keep");
    const layout = await readOciLayout(join(tmp.path, "layout"));
    await expect(unpackImage({ layout, platform: "amd64", dest })).rejects.toMatchObject({
      code: "UNPACK_DEST_NOT_EMPTY",
    });
    expect(readdirSync(dest)).toEqual(["keep"]);
    // An existing empty directory is fine.
    const empty = join(tmp.path, "empty");
    await mkdir(empty);
    await unpackImage({ layout, platform: "amd64", dest: empty });
    expect(readFileSync(join(empty, "f"), "utf8")).toBe("x");
  });
});

describe("generateRealisticImage", () => {
  it("writes a valid 3-layer image (whiteouts, opaque dir, hard links, merged /usr) at any size", async () => {
    await using tmp = await tempDir();
    const image = await generateRealisticImage({
      dir: join(tmp.path, "layout"),
      totalBytes: 3 * 1024 * 1024,
      keepLayerTars: true,
    });
    expect(image.layers).toHaveLength(3);
    expect(image.layerTarFiles).toHaveLength(3);
    expect(image.files).toBeGreaterThan(100);
    expect(image.uncompressedBytes).toBeGreaterThan(3 * 1024 * 1024);
    const dest = join(tmp.path, "root");
    const result = await unpackImage({
      layout: await readOciLayout(image.layoutPath),
      platform: hostPlatformArch(),
      dest,
    });
    expect(result.layers).toHaveLength(3);
    expect(readlinkSync(join(dest, "bin"))).toBe("usr/bin");
    expect(readdirSync(join(dest, "usr/share/doc"))).toEqual([]);
    expect(readdirSync(join(dest, "srv/app/lib")).length).toBeGreaterThan(0);
    const links = execFileSync("find", [dest, "-name", "*.hardlink", "-links", "+1"], { encoding: "utf8" })
      .trim()
      .split("\n");
    expect(links.length).toBeGreaterThan(0);
    expect(links[0]).not.toBe("");
  });
});

describe("unpackImage: cancellation", () => {
  it("stops on an aborted signal and removes its staging directory", async () => {
    await using tmp = await tempDir();
    await writeOciLayout({
      dir: join(tmp.path, "layout"),
      images: [
        {
          platform: amd64,
          layers: [{ entries: [{ path: "a", content: "1" }] }, { entries: [{ path: "b", content: "2" }] }],
        },
      ],
    });
    const layout = await readOciLayout(join(tmp.path, "layout"));
    const controller = new AbortController();
    const result = unpackImage({
      layout,
      platform: "amd64",
      dest: join(tmp.path, "root"),
      signal: controller.signal,
      onProgress: (p) => {
        if (p.done && p.layerIndex === 0) controller.abort();
      },
    });
    await expect(result).rejects.toMatchObject({ name: "AbortError" });
    expect(readdirSync(tmp.path)).toEqual(["layout"]);
  });
});

describe("readOciLayout", () => {
  it("reads a tar of a layout in place and unpacks the same tree as from the directory", async () => {
    await using tmp = await tempDir();
    await writeOciLayout({
      dir: join(tmp.path, "layout"),
      images: [
        { platform: amd64, layers: [{ entries: [{ path: "hello", content: "world", mode: 0o600 }] }] },
      ],
      tag: "v1",
    });
    execFileSync("tar", ["-cf", join(tmp.path, "layout.tar"), "-C", join(tmp.path, "layout"), "."]);
    const layout = await readOciLayout(join(tmp.path, "layout.tar"));
    expect(layout.kind).toBe("tar");
    await unpackImage({ layout, platform: "amd64", dest: join(tmp.path, "root"), tag: "v1" });
    expect(readFileSync(join(tmp.path, "root/hello"), "utf8")).toBe("world");
    await expect(
      unpackImage({ layout, platform: "amd64", dest: join(tmp.path, "r2"), tag: "v2" }),
    ).rejects.toThrow(/no image tagged "v2"; it has "v1"/);
  });

  it.skipIf(!existsSync("/usr/bin/skopeo"))(
    `reads an oci-archive written by skopeo${existsSync("/usr/bin/skopeo") ? "" : " (skipped: skopeo is not installed)"}`,
    async () => {
      await using tmp = await tempDir();
      await writeOciLayout({
        dir: join(tmp.path, "layout"),
        images: [
          { platform: amd64, layers: [{ entries: [{ path: "amd", content: "64" }], compression: "zstd" }] },
          {
            platform: { os: "linux", architecture: "arm64", variant: "v8" },
            layers: [{ entries: [{ path: "arm", content: "64" }] }],
          },
        ],
        tag: "multi",
      });
      const archive = join(tmp.path, "image.tar");
      execFileSync("skopeo", [
        "copy",
        "--quiet",
        "--all",
        `oci:${join(tmp.path, "layout")}:multi`,
        `oci-archive:${archive}:multi`,
      ]);
      const layout = await readOciLayout(archive);
      expect(layout.kind).toBe("tar");
      await unpackImage({ layout, platform: "arm64", dest: join(tmp.path, "root"), tag: "multi" });
      expect(readdirSync(join(tmp.path, "root"))).toEqual(["arm"]);
    },
  );

  it("rejects a missing or malformed layout with a typed error", async () => {
    await using tmp = await tempDir();
    await expect(readOciLayout(join(tmp.path, "nope"))).rejects.toMatchObject({ code: "OCI_LAYOUT_INVALID" });
    await mkdir(join(tmp.path, "empty"));
    await expect(readOciLayout(join(tmp.path, "empty"))).rejects.toThrow(/no oci-layout file/);
    writeFileSync(join(tmp.path, "junk.tar"), "this is not a tar archive at all".repeat(40));
    await expect(readOciLayout(join(tmp.path, "junk.tar"))).rejects.toMatchObject({
      code: "OCI_LAYOUT_INVALID",
    });
  });

  it("refuses digests that would name a path outside blobs/", async () => {
    await using tmp = await tempDir();
    const dir = join(tmp.path, "layout");
    await writeOciLayout({ dir, images: [{ platform: amd64, layers: [] }] });
    writeFileSync(
      join(dir, "index.json"),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [
          { mediaType: MEDIA_TYPES.ociManifest, digest: "sha256:../../../../etc/passwd", size: 10 },
        ],
      }),
    );
    const error = await readOciLayout(dir).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(RootfsError);
    expect((error as RootfsError).code).toBe("OCI_LAYOUT_INVALID");
    expect((error as RootfsError).message).toMatch(/manifests\.0\.digest/);
  });
});

describe("platform selection", () => {
  const image = (architecture: string, variant: string | undefined, marker: string) => ({
    platform: { os: "linux", architecture, ...(variant ? { variant } : {}) },
    layers: [{ entries: [{ path: "which", content: marker }] }],
  });
  /** Writes `images` as the layout `{dir}/{name}`, unpacks it for `platform`, returns the chosen image's marker. */
  const unpackedMarker = async (
    dir: string,
    name: string,
    platform: "amd64" | "arm64",
    images: ReturnType<typeof image>[],
    layoutOptions: { nestedIndex?: boolean; descriptorPlatforms?: boolean } = {},
  ) => {
    await writeOciLayout({ dir: join(dir, name), images, ...layoutOptions });
    const dest = join(dir, `${name}-root`);
    await unpackImage({ layout: await readOciLayout(join(dir, name)), platform, dest });
    return readFileSync(join(dest, "which"), "utf8");
  };

  it("picks the target's manifest from a nested multi-platform index", async () => {
    await using tmp = await tempDir();
    await writeOciLayout({
      dir: join(tmp.path, "layout"),
      images: [image("amd64", undefined, "amd64"), image("arm64", "v8", "arm64"), image("arm", "v7", "arm")],
    });
    const layout = await readOciLayout(join(tmp.path, "layout"));
    for (const arch of ["amd64", "arm64"] as const) {
      const result = await unpackImage({ layout, platform: arch, dest: join(tmp.path, arch) });
      expect(readFileSync(join(tmp.path, arch, "which"), "utf8")).toBe(arch);
      expect(result.platform.architecture).toBe(arch);
    }
  });

  it("matches an arm64 entry without a variant to arm64/v8, preferring an exact match", async () => {
    await using tmp = await tempDir();
    expect(await unpackedMarker(tmp.path, "a", "arm64", [image("arm64", undefined, "no-variant")])).toBe(
      "no-variant",
    );
    expect(
      await unpackedMarker(tmp.path, "b", "arm64", [
        image("arm64", undefined, "no-variant"),
        image("arm64", "v8", "exact"),
      ]),
    ).toBe("exact");
  });

  it("reads the platform from the config when descriptors carry none", async () => {
    await using tmp = await tempDir();
    const marker = await unpackedMarker(
      tmp.path,
      "a",
      "amd64",
      [image("arm64", "v8", "arm"), image("amd64", undefined, "amd")],
      { nestedIndex: false, descriptorPlatforms: false },
    );
    expect(marker).toBe("amd");
  });

  it("lists the image's platforms when none matches", async () => {
    await using tmp = await tempDir();
    await writeOciLayout({
      dir: join(tmp.path, "a"),
      images: [image("arm", "v7", "x"), image("s390x", undefined, "y")],
    });
    const error = await unpackImage({
      layout: await readOciLayout(join(tmp.path, "a")),
      platform: "amd64",
      dest: join(tmp.path, "r"),
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({
      code: "PLATFORM_NOT_FOUND",
      details: { available: ["linux/arm/v7", "linux/s390x"] },
    });
    expect((error as Error).message).toContain(
      "has no image for linux/amd64; it has linux/arm/v7, linux/s390x",
    );
    expect(readdirSync(tmp.path).sort()).toEqual(["a"]);
  });

  it("understands Docker manifest lists and schema-2 manifests", async () => {
    await using tmp = await tempDir();
    const dir = join(tmp.path, "layout");
    await mkdir(dir);
    writeFileSync(join(dir, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
    const tar = tarArchive([{ path: "docker", content: "yes" }]);
    const layer = await writeBlob(dir, compress(tar, "gzip"), MEDIA_TYPES.dockerLayerGzip);
    const config = await writeBlob(
      dir,
      Buffer.from(
        JSON.stringify({
          architecture: "amd64",
          os: "linux",
          rootfs: { type: "layers", diff_ids: [sha256Digest(tar)] },
        }),
      ),
      MEDIA_TYPES.dockerConfig,
    );
    const manifest = await writeBlob(
      dir,
      Buffer.from(
        JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.dockerManifest, config, layers: [layer] }),
      ),
      MEDIA_TYPES.dockerManifest,
    );
    const list = await writeBlob(
      dir,
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MEDIA_TYPES.dockerManifestList,
          manifests: [{ ...manifest, platform: { os: "linux", architecture: "amd64" } }],
        }),
      ),
      MEDIA_TYPES.dockerManifestList,
    );
    writeFileSync(join(dir, "index.json"), JSON.stringify({ schemaVersion: 2, manifests: [list] }));
    await unpackImage({ layout: await readOciLayout(dir), platform: "amd64", dest: join(tmp.path, "r") });
    expect(readFileSync(join(tmp.path, "r/docker"), "utf8")).toBe("yes");
  });
});
