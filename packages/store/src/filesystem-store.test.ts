import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { isTempName } from "./atomic-file.ts";
import { FilesystemStore } from "./filesystem-store.ts";
import { openFdCount } from "./test-fake-build.ts";

let root: string;
let fdsBefore: number;

beforeEach(async () => {
  fdsBefore = await openFdCount();
  root = await mkdtemp(join(tmpdir(), "sbx-fs-store-"));
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("FilesystemStore", () => {
  it("puts bytes and file ranges, gets ranges, heads, lists by prefix and deletes", async () => {
    await using store = new FilesystemStore({ directory: join(root, "store") });
    await store.put("builds/A/vmstate", Buffer.from("0123456789"));
    await writeFile(join(root, "source"), "abcdefghij");
    await store.put("builds/A/memory.chunks/0000000-x", { path: join(root, "source"), offset: 2, length: 5 });
    await store.put("builds/B/vmstate", new Uint8Array());
    expect((await store.get("builds/A/vmstate", { offset: 3, length: 4 })).toString()).toBe("3456");
    expect((await store.get("builds/A/memory.chunks/0000000-x")).toString()).toBe("cdefg");
    expect(await store.head("builds/A/vmstate")).toEqual({ key: "builds/A/vmstate", sizeBytes: 10 });
    expect(await store.head("builds/A/absent")).toBeUndefined();
    expect((await store.list("builds/A/")).map((o) => o.key)).toEqual([
      "builds/A/memory.chunks/0000000-x",
      "builds/A/vmstate",
    ]);
    expect((await store.list("builds/")).length).toBe(3);
    expect(await store.list("nothing/")).toEqual([]);
    // Idempotent: the same put twice leaves one object with the same bytes.
    await store.put("builds/A/vmstate", Buffer.from("0123456789"));
    expect((await store.get("builds/A/vmstate")).toString()).toBe("0123456789");
    await store.delete("builds/A/vmstate");
    await store.delete("builds/A/vmstate");
    await expect(store.get("builds/A/vmstate")).rejects.toMatchObject({ code: "NOT_FOUND" });
    await expect(
      store.get("builds/A/memory.chunks/0000000-x", { offset: 4, length: 2 }),
    ).rejects.toMatchObject({
      code: "RANGE_INVALID",
    });
    // No temp file is left beside the objects.
    expect((await readdir(join(root, "store", "builds", "A"))).filter(isTempName)).toEqual([]);
    expect(await openFdCount()).toBe(fdsBefore);
  });

  it("refuses keys that could climb out of the root or are not plain", async () => {
    await using store = new FilesystemStore({ directory: join(root, "store") });
    for (const key of [
      "../x",
      "a/../../x",
      "/abs",
      "a//b",
      "",
      ".hidden",
      "a/.tmp-1-x",
      "a b",
      "a\\b",
      "x".repeat(600),
    ])
      await expect(store.put(key, Buffer.from("x"))).rejects.toMatchObject({ code: "KEY_INVALID" });
    expect(await readdir(root)).toEqual([]);
  });

  it("a put whose source vanishes leaves nothing behind", async () => {
    await using store = new FilesystemStore({ directory: join(root, "store") });
    await expect(store.put("builds/A/x", { path: join(root, "missing") })).rejects.toMatchObject({
      code: "STORE_FAILED",
    });
    expect(await readdir(join(root, "store", "builds", "A"))).toEqual([]);
  });
});
