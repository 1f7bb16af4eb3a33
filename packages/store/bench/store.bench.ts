// Prints JSON: what moving a build through the store costs, against the local filesystem in the same run.
// - upload: a pause that owns 1% of 512 MiB of guest memory (clustered in 64 KiB runs, and scattered as
//   single 4 KiB pages), to s3rver on loopback and to a filesystem store: time, bytes sent, chunks;
// - a 4 MiB memory chunk read cold (range GET, zstd, sha256, into the cache), warm (cache entry checked
//   the first time this process uses it) and hot (already checked), against a plain pread of the same
//   4 MiB from a local file.
import { randomInt } from "node:crypto";
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { benchEnvironment } from "../../../scripts/bench-environment.ts";
import type { BuildStore } from "../src/build-store.ts";
import { ChunkCache } from "../src/chunk-cache.ts";
import { FilesystemStore } from "../src/filesystem-store.ts";
import { RemoteMemory } from "../src/remote-memory.ts";
import { makeFakeBuild } from "../src/test-fake-build.ts";
import { TestS3Server } from "../src/test-s3-server.ts";
import { type ByteRange, uploadBuild } from "../src/upload.ts";

const MiB = 1024 * 1024;
const MEMORY = 512 * MiB;
const CHUNK = 4 * MiB;
const OWNED_BYTES = MEMORY / 100;
const SAMPLES = 16;

function ownedRanges(runBytes: number): ByteRange[] {
  const slots = MEMORY / runBytes;
  const chosen = new Set<number>();
  while (chosen.size * runBytes < OWNED_BYTES) chosen.add(randomInt(slots));
  return [...chosen].sort((a, b) => a - b).map((slot) => ({ offset: slot * runBytes, length: runBytes }));
}

const p50 = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? 0;
const round = (value: number) => Math.round(value * 1000) / 1000;

const root = await mkdtemp(join(tmpdir(), "sbx-store-bench-"));
const results: Record<string, unknown> = {};
try {
  await using server = await TestS3Server.start();
  const backends: [string, () => BuildStore][] = [
    ["s3rver", () => server.store()],
    ["filesystem", () => new FilesystemStore({ directory: join(root, "fs-store") })],
  ];
  const upload: Record<string, unknown> = {};
  let clustered: Awaited<ReturnType<typeof makeFakeBuild>> | undefined;
  for (const [layout, runBytes] of [
    ["clustered64k", 64 * 1024],
    ["scattered4k", 4096],
  ] as const) {
    const id = `01JBENCH${layout
      .toUpperCase()
      .replace(/[^0-9A-Z]/g, "")
      .padEnd(18, "0")
      .slice(0, 18)}`;
    const build = await makeFakeBuild({
      parent: join(root, "local", layout),
      id,
      memorySize: MEMORY,
      memoryRanges: ownedRanges(runBytes),
      rootfsSize: 8 * MiB,
    });
    if (layout === "clustered64k") clustered = build;
    for (const [backend, make] of backends) {
      await using store = make();
      const start = performance.now();
      const report = await uploadBuild({
        store,
        directory: build.directory,
        manifest: build.manifest,
        memoryRanges: build.memoryRanges,
        chunkSize: CHUNK,
      });
      const ms = performance.now() - start;
      const rerun = performance.now();
      await uploadBuild({
        store,
        directory: build.directory,
        manifest: build.manifest,
        memoryRanges: build.memoryRanges,
      });
      upload[`${layout}/${backend}`] = {
        ms: round(ms),
        bytesUploaded: report.bytesUploaded,
        uploadedPerMemory: round(report.bytesUploaded / MEMORY),
        chunksUploaded: report.chunksUploaded,
        zeroChunks: report.zeroChunks,
        bytesRead: report.bytesRead,
        idempotentRerunMs: round(performance.now() - rerun),
      };
    }
  }
  results.upload = {
    memoryBytes: MEMORY,
    ownedBytes: OWNED_BYTES,
    chunkBytes: CHUNK,
    rootfsBytes: 8 * MiB,
    ...upload,
  };

  if (clustered) {
    const build = clustered;
    await using store = server.store();
    const cacheDir = join(root, "cache");
    const offsets = [...new Set(build.memoryRanges.map((r) => Math.floor(r.offset / CHUNK) * CHUNK))].slice(
      0,
      SAMPLES,
    );
    const cold: number[] = [];
    {
      await using cache = await ChunkCache.open({ directory: cacheDir, maxBytes: 1024 * MiB });
      const memory = new RemoteMemory({ store, cache });
      await memory.chunkTable(build.id);
      for (const offset of offsets) {
        const start = performance.now();
        await memory.readMemoryRange(build.id, offset, CHUNK);
        cold.push(performance.now() - start);
      }
    }
    const warm: number[] = [];
    const hot: number[] = [];
    {
      await using cache = await ChunkCache.open({ directory: cacheDir, maxBytes: 1024 * MiB });
      const memory = new RemoteMemory({ store, cache });
      await memory.chunkTable(build.id);
      for (const [samples] of [[warm], [hot]] as const)
        for (const offset of offsets) {
          const start = performance.now();
          await memory.readMemoryRange(build.id, offset, CHUNK);
          samples.push(performance.now() - start);
        }
    }
    const local: number[] = [];
    const handle = await open(join(build.directory, "memory"), "r");
    try {
      const buffer = Buffer.allocUnsafe(CHUNK);
      for (const offset of offsets) {
        const start = performance.now();
        await handle.read(buffer, 0, CHUNK, offset);
        local.push(performance.now() - start);
      }
    } finally {
      await handle.close();
    }
    results.chunkRead = {
      chunkBytes: CHUNK,
      samples: offsets.length,
      coldFromS3rverP50Ms: round(p50(cold)),
      warmCacheFirstUseP50Ms: round(p50(warm)),
      hotCacheP50Ms: round(p50(hot)),
      baselineLocalFileP50Ms: round(p50(local)),
    };
  }
} finally {
  await rm(root, { recursive: true, force: true });
}

process.stdout.write(
  `${JSON.stringify({ environment: benchEnvironment({ bench: "@sbx/store" }), ...results }, null, 2)}\n`,
);
