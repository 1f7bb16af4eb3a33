// Memory that lives in a build store: chunks come through a RemoteMemorySource when a fault or the
// working set needs them, the fault loop never waits for one, and a chunk that cannot be had stops the
// server with a typed error instead of leaving the guest hanging.
import { readFileSync, readSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it, vi } from "vitest";
import type { RemoteMemorySource } from "./chunk-fetches.ts";
import { fullMemoryHeader, type MemoryHeader, overlayMemoryHeader } from "./memory-header.ts";
import { PageFaultServer } from "./server.ts";
import { faultLoops } from "./test-native-helper.ts";
import { dir, memoryFile, nativeHelper, peer, usePeerFixture, withHoldingPeer } from "./test-peer-fixture.ts";
import { runTestPeer, spawnTestPeer } from "./testing/peer.ts";

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const CHUNK = MiB;
const PAGE = 4096;
const PAGES = SIZE / PAGE;
const BASE = "base";
const REMOTE = "remote";

usePeerFixture({ prefix: "lazy", memorySize: SIZE });

/**
 * A source that serves the memory file's chunks as files of their own (as the chunk cache keeps them),
 * recording each request; `gate` may hold a chunk back until the test lets it go.
 */
function chunkSource(options: { gate?: (index: number) => Promise<void> } = {}) {
  const bytes = readFileSync(memoryFile);
  const requests: number[] = [];
  const source: RemoteMemorySource = {
    sizeBytes: SIZE,
    chunkSize: CHUNK,
    async fetchChunk(index) {
      requests.push(index);
      await options.gate?.(index);
      await new Promise((resolve) => setTimeout(resolve, 2)); // a store is never instant
      const path = join(dir, `chunk-${index}`);
      writeFileSync(path, bytes.subarray(index * CHUNK, (index + 1) * CHUNK));
      return path;
    },
  };
  return { source, requests };
}

const socketPath = () => join(dir, "uffd.sock");

for (const { codePath, helper } of faultLoops(nativeHelper.path)) {
  describe(`lazy memory from a remote source (${codePath})`, () => {
    it("a build whose memory is all remote restores byte-exactly, each chunk fetched once", async () => {
      const { source, requests } = chunkSource();
      const header = fullMemoryHeader({ build: REMOTE, memorySize: SIZE });
      await using server = new PageFaultServer({
        socketPath: socketPath(),
        memory: { header, paths: {}, remote: { [REMOTE]: source } },
        nativeHelper: helper,
      });
      await server.listen();
      const result = await runTestPeer({
        binary: peer,
        socketPath: socketPath(),
        memoryFile,
        size: SIZE,
        mode: "random",
      });
      expect((await server.stopped).reason).toBe("peer-exited");
      expect(result.mismatches).toBe(0);
      expect(result.touched).toBeGreaterThan(0);
      const metrics = server.metrics();
      expect(new Set(requests).size).toBe(requests.length);
      expect(metrics.chunksFetched).toBe(requests.length);
      expect(metrics.faultsDeferred).toBeGreaterThanOrEqual(requests.length);
    });

    it("faults of local pages are served while a remote chunk is held back", async () => {
      // The first quarter of the memory is a remote build's (a pause made elsewhere), the rest local.
      const header: MemoryHeader = overlayMemoryHeader(
        fullMemoryHeader({ build: BASE, memorySize: SIZE }),
        REMOTE,
        [{ offset: 0, length: SIZE / 4 }],
      );
      const release = Promise.withResolvers<void>();
      const { source } = chunkSource({ gate: () => release.promise });
      await using server = new PageFaultServer({
        socketPath: socketPath(),
        memory: { header, paths: { [BASE]: memoryFile }, remote: { [REMOTE]: source } },
        nativeHelper: helper,
      });
      await server.listen();
      // Four threads, one quarter each: the first waits for the held chunks, the others run through.
      const run = runTestPeer({
        binary: peer,
        socketPath: socketPath(),
        memoryFile,
        size: SIZE,
        mode: "seq",
        threads: 4,
      });
      await vi.waitFor(() => expect(server.metrics().faults).toBeGreaterThanOrEqual((3 * PAGES) / 4), {
        timeout: 30_000,
        interval: 20,
      });
      expect(server.metrics().chunksFetched).toBe(0);
      expect(server.metrics().faultsDeferred).toBeGreaterThanOrEqual(1);
      release.resolve();
      const result = await run;
      expect(result.mismatches).toBe(0);
      expect(result.touched).toBe(PAGES);
      expect(server.metrics().chunksFetched).toBeLessThanOrEqual(SIZE / 4 / CHUNK);
    });

    it("asks for the working set's chunks before anyone connects and copies them in as they arrive", async () => {
      const { source, requests } = chunkSource();
      const header = fullMemoryHeader({ build: REMOTE, memorySize: SIZE });
      const workingSet = [
        { offset: 9 * CHUNK + 5 * PAGE, length: 3 * PAGE },
        { offset: 5 * CHUNK, length: CHUNK },
      ];
      await using server = new PageFaultServer({
        socketPath: socketPath(),
        memory: { header, paths: {}, remote: { [REMOTE]: source } },
        workingSet,
        nativeHelper: helper,
      });
      await server.listen();
      await vi.waitFor(() => expect(requests).toEqual([9, 5]), { timeout: 10_000, interval: 10 });
      await withHoldingPeer({ socketPath: socketPath(), size: SIZE }, async () => {
        await server.ready;
        await vi.waitFor(() => expect(server.metrics().prefetched).toBe(3 + CHUNK / PAGE), {
          timeout: 20_000,
        });
        await using memfd = server.takeMemfd();
        const file = readFileSync(memoryFile);
        const page = Buffer.alloc(PAGE);
        for (const offset of [9 * CHUNK + 5 * PAGE, 9 * CHUNK + 7 * PAGE, 5 * CHUNK, 6 * CHUNK - PAGE]) {
          readSync(memfd?.fd ?? -1, page, 0, PAGE, offset);
          expect(page.equals(file.subarray(offset, offset + PAGE))).toBe(true);
        }
        expect(server.metrics().faultsOnDemand).toBe(0);
      });
    });

    /** Serves an all-remote build from `source` to a peer walking it; the server's stop. */
    async function stopWith(source: RemoteMemorySource, options: { fetchTimeoutMs?: number } = {}) {
      const header = fullMemoryHeader({ build: REMOTE, memorySize: SIZE });
      await using server = new PageFaultServer({
        socketPath: socketPath(),
        memory: { header, paths: {}, remote: { [REMOTE]: source } },
        nativeHelper: helper,
        ...options,
      });
      await server.listen();
      const child = spawnTestPeer({
        binary: peer,
        socketPath: socketPath(),
        memoryFile,
        size: SIZE,
        mode: "seq",
      });
      try {
        return await server.stopped;
      } finally {
        child.kill("SIGKILL");
        await new Promise((resolve) => child.once("close", resolve));
      }
    }

    it("a chunk that cannot be had in time stops the server with MEMORY_FETCH_FAILED", async () => {
      // A store that never answers and ignores the abort: the deadline still holds.
      const stop = await stopWith(
        { sizeBytes: SIZE, chunkSize: CHUNK, fetchChunk: () => new Promise<string>(() => {}) },
        { fetchTimeoutMs: 300 },
      );
      expect(stop.reason).toBe("error");
      expect(stop.error?.code).toBe("MEMORY_FETCH_FAILED");
      expect(stop.error?.message).toMatch(/chunk 0 of build remote/);
    });

    it("a chunk file of the wrong size stops the server with MEMORY_FILE_INVALID, nothing mapped from it", async () => {
      const stop = await stopWith({
        sizeBytes: SIZE,
        chunkSize: CHUNK,
        async fetchChunk(index) {
          const path = join(dir, `short-${index}`);
          writeFileSync(path, Buffer.alloc(CHUNK / 2, 1));
          return path;
        },
      });
      expect(stop.reason).toBe("error");
      expect(stop.error?.code).toBe("MEMORY_FILE_INVALID");
    });
  });
}

describe("lazy memory options", () => {
  it("a remote source that does not fit the header is refused before anything starts", () => {
    const header = fullMemoryHeader({ build: REMOTE, memorySize: SIZE });
    const source: RemoteMemorySource = {
      sizeBytes: SIZE * 2,
      chunkSize: CHUNK,
      fetchChunk: async () => undefined,
    };
    expect(
      () =>
        new PageFaultServer({
          socketPath: socketPath(),
          memory: { header, paths: {}, remote: { [REMOTE]: source } },
        }),
    ).toThrow(expect.objectContaining({ code: "INVALID_OPTIONS" }));
    expect(
      () =>
        new PageFaultServer({
          socketPath: socketPath(),
          memory: {
            header,
            paths: {},
            remote: { [REMOTE]: { ...source, sizeBytes: SIZE, chunkSize: 1000 } },
          },
        }),
    ).toThrow(expect.objectContaining({ code: "INVALID_OPTIONS" }));
    expect(() => new PageFaultServer({ socketPath: socketPath(), memory: { header, paths: {} } })).toThrow(
      /no memory file path or remote source for build remote/,
    );
  });
});
