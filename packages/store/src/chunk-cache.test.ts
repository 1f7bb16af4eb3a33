import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ChunkCache } from "./chunk-cache.ts";
import { FilesystemStore } from "./filesystem-store.ts";
import { RemoteMemory } from "./remote-memory.ts";
import { filesUnder, makeFakeBuild, openFdCount } from "./test-fake-build.ts";
import { uploadBuild } from "./upload.ts";

const KiB = 1024;
const CHUNK = 64 * KiB;
const BUILD = "01JCACHE000000000000000000";

let root: string;
let fdsBefore: number;

beforeEach(async () => {
  fdsBefore = await openFdCount();
  root = await mkdtemp(join(tmpdir(), "sbx-chunk-cache-"));
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const sha = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

/** A build of 16 random 64 KiB chunks (1 MiB) in a filesystem store. */
async function storedBuild() {
  const build = await makeFakeBuild({
    parent: join(root, "local"),
    id: BUILD,
    memorySize: 1024 * KiB,
    memoryRanges: [{ offset: 0, length: 1024 * KiB }],
    rootfsSize: 64 * KiB,
  });
  const store = new FilesystemStore({ directory: join(root, "store") });
  await uploadBuild({
    store,
    directory: build.directory,
    manifest: build.manifest,
    memoryRanges: build.memoryRanges,
    chunkSize: CHUNK,
  });
  return { build, store, memory: await readFile(join(build.directory, "memory")) };
}

describe("ChunkCache", () => {
  it("keeps under its size limit by evicting the least recently used chunks", async () => {
    const { store, memory } = await storedBuild();
    await using cache = await ChunkCache.open({ directory: join(root, "cache"), maxBytes: 4 * CHUNK });
    const reader = new RemoteMemory({ store, cache });
    for (let index = 0; index < 4; index++) await reader.ensureChunk(BUILD, index * CHUNK);
    // Chunk 0 is used again, so chunk 1 is now the least recently used (mtime is the last use).
    const chunks = join(root, "cache", "chunks");
    for (const [i, name] of [
      sha(memory.subarray(CHUNK, 2 * CHUNK)),
      sha(memory.subarray(2 * CHUNK, 3 * CHUNK)),
      sha(memory.subarray(3 * CHUNK, 4 * CHUNK)),
    ].entries())
      await utimes(join(chunks, name), new Date(1000 + i), new Date(1000 + i));
    await utimes(join(chunks, sha(memory.subarray(0, CHUNK))), new Date(5000), new Date(5000));
    await reader.ensureChunk(BUILD, 4 * CHUNK);
    const kept = new Set(await readdir(chunks));
    expect(kept.size).toBe(4);
    expect(kept.has(sha(memory.subarray(CHUNK, 2 * CHUNK)))).toBe(false);
    expect(kept.has(sha(memory.subarray(0, CHUNK)))).toBe(true);
    expect(cache.stats()).toMatchObject({ evicted: 1, bytes: 4 * CHUNK, misses: 5 });
    // An evicted chunk is fetched again and its bytes are right.
    const again = await reader.readMemoryRange(BUILD, CHUNK + 100, 1000);
    expect(again.equals(memory.subarray(CHUNK + 100, CHUNK + 1100))).toBe(true);
  });

  it("drops a cached chunk that fails its checksum and fetches it again", async () => {
    const { store, memory } = await storedBuild();
    {
      await using cache = await ChunkCache.open({ directory: join(root, "cache"), maxBytes: 16 * CHUNK });
      await new RemoteMemory({ store, cache }).ensureChunk(BUILD, 0);
    }
    const path = join(root, "cache", "chunks", sha(memory.subarray(0, CHUNK)));
    const bytes = await readFile(path);
    bytes[7] = (bytes[7] ?? 0) ^ 1;
    await writeFile(path, bytes);
    await using cache = await ChunkCache.open({ directory: join(root, "cache"), maxBytes: 16 * CHUNK });
    const read = await new RemoteMemory({ store, cache }).readMemoryRange(BUILD, 0, 64);
    expect(read.equals(memory.subarray(0, 64))).toBe(true);
    expect(cache.stats()).toMatchObject({ corruptDropped: 1, misses: 1 });
    expect(sha(await readFile(path))).toBe(sha(memory.subarray(0, CHUNK)));
  });

  it("takes over a lock and removes a temp file left by a process that died mid-fetch", async () => {
    const { store, memory } = await storedBuild();
    const digest = sha(memory.subarray(0, CHUNK));
    await using first = await ChunkCache.open({ directory: join(root, "cache"), maxBytes: 16 * CHUNK });
    // A pid that cannot be alive: above the kernel's pid_max.
    await writeFile(join(root, "cache", "locks", digest), "4194305");
    await writeFile(join(root, "cache", "tmp", `.tmp-4194305-abc-${digest}`), "half");
    const reader = new RemoteMemory({ store, cache: first });
    await reader.ensureChunk(BUILD, 0);
    await using second = await ChunkCache.open({ directory: join(root, "cache"), maxBytes: 16 * CHUNK });
    expect(await filesUnder(join(root, "cache"))).toEqual([`chunks/${digest}`]);
    expect(second.stats().bytes).toBe(CHUNK);
  });

  it("two processes filling the same cache at once fetch each chunk once and leave no lock or temp file", async () => {
    const { store } = await storedBuild();
    await store[Symbol.asyncDispose]();
    const run = () =>
      promisify(execFile)(
        process.execPath,
        [
          "--conditions=@sbx/source",
          new URL("./test-fill-cache.ts", import.meta.url).pathname,
          join(root, "store"),
          join(root, "cache"),
          String(64 * CHUNK),
          BUILD,
        ],
        { encoding: "utf8" },
      );
    const [a, b] = await Promise.all([run(), run()]);
    const stats = [JSON.parse(a.stdout), JSON.parse(b.stdout)] as { misses: number; hits: number }[];
    expect(stats.reduce((sum, s) => sum + s.misses, 0)).toBe(16);
    expect(stats.reduce((sum, s) => sum + s.misses + s.hits, 0)).toBeGreaterThanOrEqual(32);
    const files = await filesUnder(join(root, "cache"));
    expect(files).toHaveLength(16);
    for (const file of files) {
      expect(file.startsWith("chunks/")).toBe(true);
      expect(sha(await readFile(join(root, "cache", file)))).toBe(file.slice("chunks/".length));
    }
  });

  it("owns no fd after use", async () => {
    const { store } = await storedBuild();
    {
      await using cache = await ChunkCache.open({ directory: join(root, "cache"), maxBytes: 2 * CHUNK });
      const reader = new RemoteMemory({ store, cache });
      await reader.readMemoryRange(BUILD, 0, 8 * CHUNK);
    }
    expect(await openFdCount()).toBe(fdsBefore);
  });
});
