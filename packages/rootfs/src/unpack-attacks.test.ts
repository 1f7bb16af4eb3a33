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
import type { TarWriterEntry } from "./tar-writer.ts";
import { openFdCount, snapshotTree, tempDir } from "./test-oci-helpers.ts";
import { writeOciLayout } from "./testing/fixtures.ts";
import { unpackImage } from "./unpack.ts";

/**
 * Each test builds a real hostile layer, unpacks it into `<tmp>/root`, and checks that `<tmp>/outside`
 * (canary files, a directory) is byte-for-byte, mode and mtime unchanged, and that the staging
 * directory of a refused unpack is gone.
 */

interface Arena {
  tmp: string;
  outside: string;
  dest: string;
  before: string;
  [Symbol.asyncDispose](): Promise<void>;
}

async function arena(): Promise<Arena> {
  const handle = await tempDir("sbx-rootfs-attack-");
  const outside = join(handle.path, "outside");
  await mkdir(join(outside, "dir"), { recursive: true });
  writeFileSync(join(outside, "canary"), "canary");
  writeFileSync(join(outside, "dir", "inner"), "inner");
  return {
    tmp: handle.path,
    outside,
    dest: join(handle.path, "root"),
    before: snapshotTree(outside),
    [Symbol.asyncDispose]: handle[Symbol.asyncDispose],
  };
}

async function unpackLayers(a: Arena, layers: TarWriterEntry[][]) {
  const written = await writeOciLayout({
    dir: join(a.tmp, "layout"),
    images: [
      { platform: { os: "linux", architecture: "amd64" }, layers: layers.map((entries) => ({ entries })) },
    ],
  });
  const layout = await readOciLayout(join(a.tmp, "layout"));
  const digests = written.manifests[0]!.layers.map((l) => l.digest);
  return { digests, run: () => unpackImage({ layout, platform: "amd64", dest: a.dest }) };
}

function assertOutsideUnchanged(a: Arena) {
  expect(snapshotTree(a.outside)).toBe(a.before);
  expect(readdirSync(a.tmp).filter((name) => name.includes(".unpack-"))).toEqual([]);
}

async function expectRefused(
  a: Arena,
  layers: TarWriterEntry[][],
  entry: string,
  layerIndex: number,
  reason: RegExp,
) {
  const { digests, run } = await unpackLayers(a, layers);
  const error = await run().catch((e: unknown) => e);
  expect(error).toBeInstanceOf(RootfsError);
  expect(error).toMatchObject({ code: "LAYER_UNSAFE_ENTRY", details: { layer: digests[layerIndex], entry } });
  expect((error as Error).message).toContain(digests[layerIndex]);
  expect((error as Error).message).toContain(JSON.stringify(entry));
  expect((error as Error).message).toMatch(reason);
  expect(existsSync(a.dest)).toBe(false);
  assertOutsideUnchanged(a);
}

describe("hostile layers: refused", () => {
  it("refuses an entry whose path climbs out with ..", async () => {
    await using a = await arena();
    await expectRefused(
      a,
      [[{ path: "../outside/canary", content: "pwned" }]],
      "../outside/canary",
      0,
      /climbs above/,
    );
  });

  it("refuses .. hidden in the middle of a path, in a later layer", async () => {
    await using a = await arena();
    await expectRefused(
      a,
      [[{ path: "ok", content: "fine" }], [{ path: "a/b/../../../outside/new", content: "pwned" }]],
      "a/b/../../../outside/new",
      1,
      /climbs above/,
    );
  });

  it("refuses a hard link whose target climbs out", async () => {
    await using a = await arena();
    await expectRefused(
      a,
      [[{ path: "hl", type: "hardlink", linkPath: "../outside/canary" }]],
      "hl",
      0,
      /hard-link target "..\/outside\/canary" climbs above/,
    );
  });

  it("refuses a hard link to an absolute host path (resolved inside the root, where it does not exist)", async () => {
    await using a = await arena();
    const target = join(a.outside, "canary");
    await expectRefused(
      a,
      [[{ path: "hl", type: "hardlink", linkPath: target }]],
      "hl",
      0,
      /does not exist inside the image/,
    );
    expect(statSync(join(a.outside, "canary")).nlink).toBe(1);
  });

  it("refuses a hard link through a planted symlink that points out", async () => {
    await using a = await arena();
    await expectRefused(
      a,
      [
        [{ path: "evil", type: "symlink", linkPath: a.outside }],
        [{ path: "hl", type: "hardlink", linkPath: "evil/canary" }],
      ],
      "hl",
      1,
      /does not exist inside the image/,
    );
  });

  it("refuses hard links to a directory or to the root", async () => {
    for (const [linkPath, reason] of [
      ["etc", /is a directory/],
      ["./", /hard link to the image root/],
    ] as const) {
      await using a = await arena();
      await expectRefused(
        a,
        [[{ path: "etc/", type: "directory" }], [{ path: "hl", type: "hardlink", linkPath }]],
        "hl",
        1,
        reason,
      );
    }
  });

  it("refuses whiteouts that name a parent (.wh.., .wh..., .wh.)", async () => {
    for (const path of ["sub/.wh..", "sub/.wh...", ".wh.."]) {
      await using a = await arena();
      await expectRefused(
        a,
        [
          [
            { path: "sub/", type: "directory" },
            { path: "sub/keep", content: "k" },
          ],
          [{ path, content: "" }],
        ],
        path,
        1,
        /whiteout naming/,
      );
    }
  });

  it("refuses replacing the root with a symlink", async () => {
    await using a = await arena();
    await expectRefused(
      a,
      [[{ path: "./", type: "symlink", linkPath: a.outside }]],
      "./",
      0,
      /replace the image root/,
    );
  });

  it("refuses a symlink loop instead of spinning", async () => {
    await using a = await arena();
    await expectRefused(
      a,
      [
        [
          { path: "loop1", type: "symlink", linkPath: "loop2" },
          { path: "loop2", type: "symlink", linkPath: "loop1" },
          { path: "loop1/x", content: "x" },
        ],
      ],
      "loop1/x",
      0,
      /more than 255 symlinks/,
    );
  });

  it("refuses device nodes under the refuse policy", async () => {
    await using a = await arena();
    const { run } = await unpackLayers(a, [
      [{ path: "dev/sda", type: "block-device", deviceMajor: 8, deviceMinor: 0 }],
    ]);
    const layout = await readOciLayout(join(a.tmp, "layout"));
    await expect(
      unpackImage({ layout, platform: "amd64", dest: a.dest, devices: "refuse" }),
    ).rejects.toMatchObject({
      code: "LAYER_UNSAFE_ENTRY",
      details: { entry: "dev/sda" },
    });
    expect(run).toBeTypeOf("function");
    assertOutsideUnchanged(a);
  });
});

describe("hostile layers: confined inside the root", () => {
  it("confines absolute entry paths to the root", async () => {
    await using a = await arena();
    const absolute = join(a.outside, "canary");
    const { run } = await unpackLayers(a, [[{ path: absolute, content: "pwned" }]]);
    await run();
    expect(readFileSync(join(a.dest, absolute), "utf8")).toBe("pwned");
    assertOutsideUnchanged(a);
  });

  it("follows an absolute symlink planted in the same layer inside the root only", async () => {
    await using a = await arena();
    const { run } = await unpackLayers(a, [
      [
        { path: "evil", type: "symlink", linkPath: a.outside },
        { path: "evil/canary", content: "pwned" },
        { path: "evil/dir/inner", content: "pwned" },
        { path: "evil/new-dir/", type: "directory" },
      ],
    ]);
    await run();
    expect(readlinkSync(join(a.dest, "evil"))).toBe(a.outside);
    expect(readFileSync(join(a.dest, a.outside, "canary"), "utf8")).toBe("pwned");
    expect(readFileSync(join(a.dest, a.outside, "dir/inner"), "utf8")).toBe("pwned");
    expect(lstatSync(join(a.dest, a.outside, "new-dir")).isDirectory()).toBe(true);
    assertOutsideUnchanged(a);
  });

  it("follows a relative ../ symlink planted by an earlier layer inside the root only", async () => {
    await using a = await arena();
    const { run } = await unpackLayers(a, [
      [
        { path: "a/b/", type: "directory" },
        { path: "a/b/up", type: "symlink", linkPath: "../../../../../../outside" },
      ],
      [{ path: "a/b/up/canary", content: "pwned" }],
      [
        { path: "chain1", type: "symlink", linkPath: "a/b/up" },
        { path: "chain1/dir/inner", content: "pwned too" },
      ],
    ]);
    await run();
    expect(readFileSync(join(a.dest, "outside/canary"), "utf8")).toBe("pwned");
    expect(readFileSync(join(a.dest, "outside/dir/inner"), "utf8")).toBe("pwned too");
    assertOutsideUnchanged(a);
  });

  it("replaces a planted symlink with the file instead of writing through it", async () => {
    await using a = await arena();
    const { run } = await unpackLayers(a, [
      [{ path: "etc/passwd", type: "symlink", linkPath: join(a.outside, "canary") }],
      [{ path: "etc/passwd", content: "root:x:0:0::/root:/bin/sh\n", mode: 0o644 }],
    ]);
    await run();
    expect(lstatSync(join(a.dest, "etc/passwd")).isFile()).toBe(true);
    expect(readFileSync(join(a.dest, "etc/passwd"), "utf8")).toContain("root:x");
    assertOutsideUnchanged(a);
  });

  it("replaces a symlinked directory with a real one when a layer has a directory entry there", async () => {
    await using a = await arena();
    const { run } = await unpackLayers(a, [
      [{ path: "data", type: "symlink", linkPath: a.outside }],
      [
        { path: "data/", type: "directory", mode: 0o700 },
        { path: "data/canary", content: "pwned" },
      ],
    ]);
    await run();
    expect(lstatSync(join(a.dest, "data")).isDirectory()).toBe(true);
    expect(readFileSync(join(a.dest, "data/canary"), "utf8")).toBe("pwned");
    assertOutsideUnchanged(a);
  });

  it("applies whiteouts and opaque markers through planted symlinks inside the root only", async () => {
    await using a = await arena();
    // Where each planted link leads when resolved inside the root, as the unpacker resolves it: the
    // whiteouts must take effect there, and never at the real paths outside.
    const twin = a.outside.slice(1);
    const { run } = await unpackLayers(a, [
      [
        { path: "evil", type: "symlink", linkPath: a.outside },
        { path: "rel", type: "symlink", linkPath: "../../../outside" },
        { path: "opq", type: "symlink", linkPath: "../../../cleared" },
        { path: `${twin}/canary`, content: "lower" },
        { path: `${twin}/keep`, content: "lower" },
        { path: "outside/dir/inner", content: "lower" },
        { path: "outside/dir/other", content: "lower" },
        { path: "cleared/old", content: "lower" },
      ],
      [
        { path: "evil/.wh.canary", content: "" },
        { path: "opq/.wh..wh..opq", content: "" },
        { path: "opq/new", content: "upper" },
        { path: "rel/dir/.wh.inner", content: "" },
        { path: ".wh.evil-does-not-exist", content: "" },
      ],
    ]);
    await run();
    expect(readdirSync(join(a.dest, twin)).sort()).toEqual(["keep"]);
    expect(readdirSync(join(a.dest, "outside/dir")).sort()).toEqual(["other"]);
    expect(readdirSync(join(a.dest, "cleared"))).toEqual(["new"]);
    expect(readlinkSync(join(a.dest, "evil"))).toBe(a.outside);
    expect(readlinkSync(join(a.dest, "rel"))).toBe("../../../outside");
    expect(readlinkSync(join(a.dest, "opq"))).toBe("../../../cleared");
    expect(readdirSync(a.dest).filter((name) => name.includes("evil-does-not-exist"))).toEqual([]);
    assertOutsideUnchanged(a);
  });

  it("a whiteout of a symlink removes the link, not its target", async () => {
    await using a = await arena();
    const { run } = await unpackLayers(a, [
      [{ path: "link", type: "symlink", linkPath: a.outside }],
      [{ path: ".wh.link", content: "" }],
    ]);
    await run();
    expect(existsSync(join(a.dest, "link"))).toBe(false);
    assertOutsideUnchanged(a);
  });

  it("links a hard link through a planted symlink to the file inside the root", async () => {
    await using a = await arena();
    const { run } = await unpackLayers(a, [
      [
        { path: "evil", type: "symlink", linkPath: a.outside },
        { path: `${a.outside.slice(1)}/canary`, content: "inside copy" },
      ],
      [{ path: "hl", type: "hardlink", linkPath: "evil/canary" }],
    ]);
    await run();
    expect(readFileSync(join(a.dest, "hl"), "utf8")).toBe("inside copy");
    expect(statSync(join(a.dest, "hl")).ino).toBe(statSync(join(a.dest, a.outside, "canary")).ino);
    assertOutsideUnchanged(a);
  });

  it("stores symlinks that point out as they are, without following them", async () => {
    await using a = await arena();
    const { run } = await unpackLayers(a, [
      [
        { path: "etc/mtab", type: "symlink", linkPath: "/proc/self/mounts" },
        { path: "escape", type: "symlink", linkPath: "../../../../outside/canary" },
      ],
    ]);
    await run();
    expect(readlinkSync(join(a.dest, "escape"))).toBe("../../../../outside/canary");
    expect(readlinkSync(join(a.dest, "etc/mtab"))).toBe("/proc/self/mounts");
    assertOutsideUnchanged(a);
  });
});

describe("resource limits", () => {
  it("stops a decompression bomb and an entry flood at the caller's limits", async () => {
    await using a = await arena();
    // 64 MiB of zeros gzip to about 64 KiB.
    const { run } = await unpackLayers(a, [[{ path: "bomb", content: Buffer.alloc(64 * 1024 * 1024) }]]);
    expect(run).toBeTypeOf("function");
    const layout = await readOciLayout(join(a.tmp, "layout"));
    await expect(
      unpackImage({
        layout,
        platform: "amd64",
        dest: a.dest,
        limits: { maxUncompressedBytes: 8 * 1024 * 1024 },
      }),
    ).rejects.toMatchObject({ code: "UNPACK_LIMIT_EXCEEDED" });
    expect(existsSync(a.dest)).toBe(false);
    assertOutsideUnchanged(a);

    await using b = await arena();
    const flood = Array.from({ length: 500 }, (_, i) => ({ path: `f${i}`, content: "" }));
    await unpackLayers(b, [flood]);
    const floodLayout = await readOciLayout(join(b.tmp, "layout"));
    await expect(
      unpackImage({ layout: floodLayout, platform: "amd64", dest: b.dest, limits: { maxEntries: 100 } }),
    ).rejects.toMatchObject({ code: "UNPACK_LIMIT_EXCEEDED" });
    expect(existsSync(b.dest)).toBe(false);
    assertOutsideUnchanged(b);

    // A path-depth bomb: one entry 300 directories deep.
    await using c = await arena();
    const deep = `${Array.from({ length: 300 }, () => "d").join("/")}/f`;
    await unpackLayers(c, [[{ path: deep, content: "x" }]]);
    const deepLayout = await readOciLayout(join(c.tmp, "layout"));
    await expect(
      unpackImage({ layout: deepLayout, platform: "amd64", dest: c.dest, limits: { maxPathDepth: 64 } }),
    ).rejects.toMatchObject({ code: "UNPACK_LIMIT_EXCEEDED", details: { limit: "maxPathDepth 64" } });
    expect(existsSync(c.dest)).toBe(false);
    assertOutsideUnchanged(c);
  });
});

describe("damaged images", () => {
  it("detects a tampered layer blob while streaming and removes the staging directory", async () => {
    await using a = await arena();
    const written = await writeOciLayout({
      dir: join(a.tmp, "layout"),
      images: [
        {
          platform: { os: "linux", architecture: "amd64" },
          layers: [{ entries: [{ path: "file", content: "x".repeat(10_000) }], compression: "none" }],
        },
      ],
    });
    const digest = written.manifests[0]!.layers[0]!.digest;
    const blob = join(a.tmp, "layout/blobs/sha256", digest.slice(7));
    const bytes = readFileSync(blob);
    bytes.write("y", 600);
    writeFileSync(blob, bytes);
    const layout = await readOciLayout(join(a.tmp, "layout"));
    await expect(unpackImage({ layout, platform: "amd64", dest: a.dest })).rejects.toMatchObject({
      code: "OCI_DIGEST_MISMATCH",
      details: { digest },
    });
    expect(existsSync(a.dest)).toBe(false);
    assertOutsideUnchanged(a);
  });

  it("closes the file it was writing when a layer ends in the middle of it", async () => {
    await using a = await arena();
    const written = await writeOciLayout({
      dir: join(a.tmp, "layout"),
      images: [
        {
          platform: { os: "linux", architecture: "amd64" },
          layers: [{ entries: [{ path: "file", content: "x".repeat(100_000) }], compression: "none" }],
        },
      ],
    });
    const digest = written.manifests[0]!.layers[0]!.digest;
    const blob = join(a.tmp, "layout/blobs/sha256", digest.slice(7));
    writeFileSync(blob, readFileSync(blob).subarray(0, 5000));
    const layout = await readOciLayout(join(a.tmp, "layout"));
    const fdsBefore = openFdCount();
    await expect(unpackImage({ layout, platform: "amd64", dest: a.dest })).rejects.toBeInstanceOf(
      RootfsError,
    );
    expect(openFdCount()).toBe(fdsBefore);
    assertOutsideUnchanged(a);
  });

  it("detects a truncated layer (size mismatch) and a truncated tar", async () => {
    await using a = await arena();
    const written = await writeOciLayout({
      dir: join(a.tmp, "layout"),
      images: [
        {
          platform: { os: "linux", architecture: "amd64" },
          layers: [{ entries: [{ path: "file", content: "x".repeat(10_000) }], compression: "gzip" }],
        },
      ],
    });
    const digest = written.manifests[0]!.layers[0]!.digest;
    const blob = join(a.tmp, "layout/blobs/sha256", digest.slice(7));
    writeFileSync(blob, readFileSync(blob).subarray(0, 40));
    const layout = await readOciLayout(join(a.tmp, "layout"));
    const error = await unpackImage({ layout, platform: "amd64", dest: a.dest }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(RootfsError);
    expect(["OCI_DIGEST_MISMATCH", "LAYER_INVALID"]).toContain((error as RootfsError).code);
    expect(existsSync(a.dest)).toBe(false);
    assertOutsideUnchanged(a);
  });
});
