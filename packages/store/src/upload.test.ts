import { mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { FilesystemStore } from "./filesystem-store.ts";
import { filesUnder, makeFakeBuild } from "./test-fake-build.ts";
import { uploadBuild } from "./upload.ts";

const KiB = 1024;
const OWNED = [{ offset: 64 * KiB, length: 8 * KiB }];

let root: string;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "sbx-upload-"));
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const fake = () =>
  makeFakeBuild({
    parent: join(root, "local"),
    id: "01JUPLOAD00000000000000000",
    memorySize: 256 * KiB,
    memoryRanges: OWNED,
    rootfsSize: 64 * KiB,
  });

describe("uploadBuild", () => {
  it("checks local files against build.json and stores nothing visible when they differ", async () => {
    const build = await fake();
    await using store = new FilesystemStore({ directory: join(root, "store") });
    // A byte of an owned page changed after build.json was written.
    const memory = await open(join(build.directory, "memory"), "r+");
    await memory.write(Buffer.from([1, 2, 3]), 0, 3, 64 * KiB + 10);
    await memory.close();
    await expect(
      uploadBuild({
        store,
        directory: build.directory,
        manifest: build.manifest,
        memoryRanges: OWNED,
        chunkSize: 16 * KiB,
      }),
    ).rejects.toMatchObject({ code: "LOCAL_BUILD_INVALID" });
    await writeFile(join(build.directory, "vmstate"), "other");
    await expect(
      uploadBuild({ store, directory: build.directory, manifest: build.manifest, memoryRanges: OWNED }),
    ).rejects.toMatchObject({ code: "LOCAL_BUILD_INVALID" });
    expect((await store.list("builds/")).filter((o) => o.key.endsWith("build.json"))).toEqual([]);
  });

  it("refuses owned ranges that overlap or run past the memory, and a manifest without an id", async () => {
    const build = await fake();
    await using store = new FilesystemStore({ directory: join(root, "store") });
    const upload = (memoryRanges: { offset: number; length: number }[], manifest: unknown = build.manifest) =>
      uploadBuild({ store, directory: build.directory, manifest, memoryRanges });
    await expect(
      upload([
        { offset: 0, length: 8192 },
        { offset: 4096, length: 8192 },
      ]),
    ).rejects.toMatchObject({
      code: "LOCAL_BUILD_INVALID",
    });
    await expect(upload([{ offset: 252 * KiB, length: 8 * KiB }])).rejects.toMatchObject({
      code: "LOCAL_BUILD_INVALID",
    });
    await expect(upload(OWNED, { ...build.manifest, id: "../x" })).rejects.toMatchObject({
      code: "LOCAL_BUILD_INVALID",
    });
  });

  it("stores only chunks with owned pages, build.json last, and refuses another build.json under the same id", async () => {
    const build = await fake();
    await using store = new FilesystemStore({ directory: join(root, "store") });
    const report = await uploadBuild({
      store,
      directory: build.directory,
      manifest: build.manifest,
      memoryRanges: OWNED,
      chunkSize: 16 * KiB,
    });
    // memory: one 16 KiB chunk at 64 KiB holds the 8 KiB owned; rootfs: 2 random chunks, 2 zero.
    expect(report).toMatchObject({ chunksUploaded: 3, zeroChunks: 2 });
    const keys = await filesUnder(join(root, "store"));
    expect(keys.filter((k) => k.includes("memory.chunks/"))).toEqual([
      expect.stringMatching(/^builds\/01JUPLOAD00000000000000000\/memory\.chunks\/0000004-[0-9a-f]{64}$/),
    ]);
    await expect(
      uploadBuild({
        store,
        directory: build.directory,
        manifest: { ...build.manifest, template: "another" },
        memoryRanges: OWNED,
      }),
    ).rejects.toMatchObject({ code: "BUILD_INVALID" });
  });
});
