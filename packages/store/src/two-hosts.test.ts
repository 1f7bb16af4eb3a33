// Two "hosts" on one machine: host A uploads a build to a real S3-protocol server (s3rver on
// loopback, in a child process), host B downloads it into its own build directory and reads memory
// through its own chunk cache.
import { createHash } from "node:crypto";
import { once } from "node:events";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ChunkCache } from "./chunk-cache.ts";
import { downloadBuild } from "./download.ts";
import { StoreError } from "./errors.ts";
import { RemoteMemory } from "./remote-memory.ts";
import type { S3Store } from "./s3-store.ts";
import { type FakeBuild, filesUnder, makeFakeBuild, openFdCount } from "./test-fake-build.ts";
import { TestS3Server } from "./test-s3-server.ts";
import { uploadBuild } from "./upload.ts";

const MiB = 1024 * 1024;
const CHUNK = 1 * MiB;
// 64 MiB of guest memory; the build owns 3 clusters of pages, about 1.3 MiB in all.
const MEMORY_SIZE = 64 * MiB;
const OWNED = [
  { offset: 0, length: 256 * 1024 },
  { offset: 10 * MiB + 4096, length: 64 * 1024 },
  { offset: 40 * MiB, length: MiB },
];
const ownedBytes = OWNED.reduce((sum, r) => sum + r.length, 0);

let root: string;
let server: TestS3Server;
let build: FakeBuild;
let fdsBefore: number;

beforeEach(async () => {
  fdsBefore = await openFdCount();
  root = await mkdtemp(join(tmpdir(), "sbx-store-hosts-"));
  server = await TestS3Server.start();
  build = await makeFakeBuild({
    parent: join(root, "hostA", "builds"),
    id: "01JBUILD0000000000000000AA",
    memorySize: MEMORY_SIZE,
    memoryRanges: OWNED,
    rootfsSize: 6 * MiB,
  });
});

afterEach(async () => {
  await server[Symbol.asyncDispose]();
  await rm(root, { recursive: true, force: true });
});

async function upload(store: S3Store) {
  return uploadBuild({
    store,
    directory: build.directory,
    manifest: build.manifest,
    memoryRanges: OWNED,
    chunkSize: CHUNK,
  });
}

describe("a build moves between two hosts through an S3-compatible store", () => {
  it("uploads on A, downloads and reads memory on B: bytes equal, bytes fetched follow owned pages, not memory size", async () => {
    {
      await using storeA = server.store();
      const first = await upload(storeA);
      expect(first.alreadyStored).toBe(false);
      // 3 memory chunks with owned pages (0, 10, 40) + rootfs: 3 random chunks, 3 zero chunks.
      expect(first.chunksUploaded).toBe(3 + 3);
      expect(first.zeroChunks).toBe(3);
      const again = await upload(storeA);
      expect(again.alreadyStored).toBe(true);
      expect(again.bytesUploaded).toBe(0);
    }

    await using storeB = server.store();
    const target = join(root, "hostB", "builds", build.id);
    const downloaded = await downloadBuild({ store: storeB, build: build.id, directory: target });
    for (const name of ["vmstate", "memory.header", "rootfs.ext4"])
      expect((await readFile(join(target, name))).equals(await readFile(join(build.directory, name)))).toBe(
        true,
      );
    expect(JSON.parse(await readFile(join(target, "build.json"), "utf8"))).toEqual(build.manifest);
    expect(await filesUnder(join(root, "hostB", "builds"))).toEqual(
      ["build.json", "memory.chunks.json", "memory.header", "rootfs.ext4", "vmstate"].map(
        (f) => `${build.id}/${f}`,
      ),
    );

    await using cache = await ChunkCache.open({
      directory: join(root, "hostB", "cache"),
      maxBytes: 64 * MiB,
    });
    const memory = new RemoteMemory({ store: storeB, cache });
    if (downloaded.memoryChunks) memory.addChunkTable(build.id, downloaded.memoryChunks);
    const original = await readFile(join(build.directory, "memory"));
    for (const range of OWNED) {
      const bytes = await memory.readMemoryRange(build.id, range.offset, range.length);
      expect(bytes.equals(original.subarray(range.offset, range.offset + range.length))).toBe(true);
    }
    // Three 1 MiB chunks hold the 1.3 MiB of owned pages; the 64 MiB of memory is never fetched.
    expect(cache.stats().fetchedBytes).toBe(3 * CHUNK);
    expect(cache.stats().fetchedBytes).toBeLessThan(3 * ownedBytes);
    expect(memory.fetched.storedBytes).toBeLessThan(3 * CHUNK + 4096);
    // A second read of the same pages is a cache hit: no request to the store.
    const requests = memory.fetched.requests;
    await memory.readMemoryRange(build.id, OWNED[2]?.offset ?? 0, 4096);
    expect(memory.fetched.requests).toBe(requests);
    await expect(memory.readMemoryRange(build.id, 20 * MiB, 4096)).rejects.toMatchObject({
      code: "RANGE_NOT_STORED",
    });

    // A second host process with a fresh cache instance sees the same entries, checked.
    await using cacheAgain = await ChunkCache.open({
      directory: join(root, "hostB", "cache"),
      maxBytes: 64 * MiB,
    });
    const memoryAgain = new RemoteMemory({ store: storeB, cache: cacheAgain });
    await memoryAgain.readMemoryRange(build.id, 0, 4096);
    expect(cacheAgain.stats()).toMatchObject({ hits: 1, misses: 0 });
  });

  it("downloads memory as a sparse file on request, uncompressed chunks too", async () => {
    await using store = server.store();
    const report = await uploadBuild({
      store,
      directory: build.directory,
      manifest: build.manifest,
      memoryRanges: OWNED,
      chunkSize: CHUNK,
      compression: "none",
    });
    expect(report.bytesUploaded).toBeGreaterThan(3 * CHUNK);
    const target = join(root, "hostB", "builds", build.id);
    await downloadBuild({ store, build: build.id, directory: target, memory: "file" });
    const original = await readFile(join(build.directory, "memory"));
    const copy = await readFile(join(target, "memory"));
    expect(copy.length).toBe(MEMORY_SIZE);
    for (const range of OWNED)
      expect(
        copy
          .subarray(range.offset, range.offset + range.length)
          .equals(original.subarray(range.offset, range.offset + range.length)),
      ).toBe(true);
    // Only the three stored chunks take blocks on disk.
    expect((await stat(join(target, "memory"))).blocks * 512).toBeLessThanOrEqual(3 * CHUNK + 64 * 1024);
    // A download into a directory that exists is refused and leaves it as it was.
    await expect(downloadBuild({ store, build: build.id, directory: target })).rejects.toMatchObject({
      code: "LOCAL_BUILD_EXISTS",
    });
    expect((await readFile(join(target, "memory"))).length).toBe(MEMORY_SIZE);
  });

  it("refuses an object larger than the reader allows without buffering it", async () => {
    await using store = server.store();
    await store.put("builds/x/big", Buffer.alloc(2 * MiB));
    await expect(store.get("builds/x/big", { maxBytes: MiB })).rejects.toMatchObject({
      code: "STORE_FAILED",
    });
  });

  it("an interrupted upload resumes: chunks already stored are skipped, build.json lands last", async () => {
    await using store = server.store();
    const failing: typeof store = Object.create(store);
    let puts = 0;
    failing.put = async (key, body, options) => {
      if (++puts === 4) throw new StoreError("STORE_UNREACHABLE", "injected failure");
      return store.put(key, body, options);
    };
    failing.head = (key, options) => store.head(key, options);
    failing.get = (key, options) => store.get(key, options);
    await expect(
      uploadBuild({
        store: failing,
        directory: build.directory,
        manifest: build.manifest,
        memoryRanges: OWNED,
        chunkSize: CHUNK,
        concurrency: 1,
      }),
    ).rejects.toMatchObject({ code: "STORE_UNREACHABLE" });
    expect(await store.head(`builds/${build.id}/build.json`)).toBeUndefined();
    const resumed = await upload(store);
    expect(resumed.chunksSkipped).toBeGreaterThan(0);
    expect(resumed.chunksSkipped + resumed.chunksUploaded).toBe(6);
    expect(await store.head(`builds/${build.id}/build.json`)).toBeDefined();
  });

  it("the store killed mid-download: STORE_UNREACHABLE in bounded time, no half build, no cache entry, no leaked fd", async () => {
    {
      await using storeA = server.store();
      await upload(storeA);
    }
    const store = server.store({ requestTimeoutMs: 5_000, maxAttempts: 2 });
    const cacheDir = join(root, "hostB", "cache");
    const cache = await ChunkCache.open({ directory: cacheDir, maxBytes: 64 * MiB });
    const memory = new RemoteMemory({ store, cache });
    await memory.readMemoryRange(build.id, 0, 4096);
    // The server is SIGKILLed while the download's parallel rootfs chunk requests are in flight.
    const dying: S3Store = Object.create(store);
    let gets = 0;
    dying.get = (key, options) => {
      if (++gets === 6) void server.kill();
      return store.get(key, options);
    };
    const target = join(root, "hostB", "builds", build.id);
    await expect(
      downloadBuild({ store: dying, build: build.id, directory: target, concurrency: 4 }),
    ).rejects.toMatchObject({
      code: "STORE_UNREACHABLE",
    });
    await expect(memory.readMemoryRange(build.id, OWNED[1]?.offset ?? 0, 4096)).rejects.toMatchObject({
      code: "STORE_UNREACHABLE",
    });
    await cache[Symbol.asyncDispose]();
    await store[Symbol.asyncDispose]();
    expect(await filesUnder(join(root, "hostB"))).toEqual([
      `cache/chunks/${(await memoryChunkDigests(build))[0]}`,
    ]);
    expect(await openFdCount()).toBe(fdsBefore);
  });

  it("a corrupt chunk in the bucket: CHUNK_CORRUPT, nothing cached", async () => {
    await using store = server.store();
    await upload(store);
    const key = (await store.list(`builds/${build.id}/memory.chunks/`))[0]?.key as string;
    const stored = await store.get(key);
    stored[100] = (stored[100] ?? 0) ^ 0xff;
    await store.put(key, stored);
    await using cache = await ChunkCache.open({ directory: join(root, "cache"), maxBytes: 64 * MiB });
    const memory = new RemoteMemory({ store, cache });
    await expect(memory.readMemoryRange(build.id, 0, 4096)).rejects.toMatchObject({ code: "CHUNK_CORRUPT" });
    expect(await filesUnder(join(root, "cache"))).toEqual([]);
  });

  it("wrong credentials: CREDENTIALS_REJECTED naming the variable", async () => {
    await using wrongKey = server.store({ credentials: { accessKeyId: "NOPE", secretAccessKey: "S3RVER" } });
    await expect(wrongKey.list("builds/")).rejects.toMatchObject({
      code: "CREDENTIALS_REJECTED",
      variable: "AWS_ACCESS_KEY_ID",
    });
    await expect(wrongKey.head("builds/x")).rejects.toMatchObject({ code: "CREDENTIALS_REJECTED" });
    // s3rver checks access key ids but not SigV4 signatures, so a wrong secret is answered the way S3
    // answers it by a plain HTTP server on loopback.
    const signatureServer = createServer((_request, response) => {
      response.writeHead(403, { "content-type": "application/xml" });
      response.end(
        '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error>',
      );
    });
    signatureServer.listen(0, "127.0.0.1");
    await once(signatureServer, "listening");
    try {
      const { port } = signatureServer.address() as AddressInfo;
      await using wrongSecret = server.store({ endpoint: `http://127.0.0.1:${port}` });
      await expect(wrongSecret.list("builds/")).rejects.toMatchObject({
        code: "CREDENTIALS_REJECTED",
        variable: "AWS_SECRET_ACCESS_KEY",
      });
    } finally {
      signatureServer.closeAllConnections();
      signatureServer.close();
    }
  });
});

async function memoryChunkDigests(fake: FakeBuild): Promise<string[]> {
  const bytes = await readFile(join(fake.directory, "memory"));
  return [createHash("sha256").update(bytes.subarray(0, CHUNK)).digest("hex")];
}
