// Publishing a build to the store. Order is what makes it safe: chunks, then chunk tables and small
// files, then build.json last, so a reader that finds build.json finds everything it names. Every
// object is named by its content (chunks carry their sha256), so a re-run after a crash heads each key
// and uploads only what is missing: idempotent and resumable.
import { createHash } from "node:crypto";
import { type FileHandle, open, readFile } from "node:fs/promises";
import { join } from "node:path";
import { type Logger, silentLogger } from "@sbx/arch";
import { z } from "zod";
import type { BuildStore } from "./build-store.ts";
import { type ChunkEntry, type ChunkTable, chunksOverlapping, MAX_CHUNK_SIZE } from "./chunk-table.ts";
import { type Compression, compressChunk } from "./compression.ts";
import { StoreError } from "./errors.ts";
import {
  buildFileKey,
  CHUNKED_FILES,
  chunkKey,
  chunkTableKey,
  DEFAULT_CHUNK_SIZE,
  STORED_BUILD_FILES,
  storedManifestSchema,
} from "./layout.ts";

/** A byte range of a file. */
export interface ByteRange {
  offset: number;
  length: number;
}

/** What uploadBuild sends: a local build directory, its manifest and the memory ranges it owns. */
export interface UploadBuildOptions {
  store: BuildStore;
  /** The local build directory (build.json, vmstate, memory, memory.header, rootfs.ext4, ...). */
  directory: string;
  /** The build's parsed build.json. */
  manifest: unknown;
  /**
   * The byte ranges of the memory file this build owns, from its memory header (`ownedRanges`):
   * only chunks overlapping them are uploaded.
   */
  memoryRanges: readonly ByteRange[];
  /** Default 4 MiB; a multiple of 4 KiB. */
  chunkSize?: number;
  /** Default zstd. */
  compression?: Compression;
  /** Parallel chunk uploads; default 4. */
  concurrency?: number;
  signal?: AbortSignal;
  logger?: Logger;
}

/** What uploadBuild sent and what it found in the store already. */
export interface UploadReport {
  build: string;
  /** build.json was already in the store with the same contents: nothing was sent. */
  alreadyStored: boolean;
  chunksUploaded: number;
  /** Chunks already in the store from an earlier, interrupted run. */
  chunksSkipped: number;
  /** All-zero chunks: recorded in the table, nothing stored. */
  zeroChunks: number;
  /** Bytes read from local files. */
  bytesRead: number;
  /** Bytes sent to the store (compressed chunks, tables, small files, build.json). */
  bytesUploaded: number;
}

const ZERO = Buffer.alloc(MAX_CHUNK_SIZE);

function isZero(bytes: Buffer): boolean {
  return bytes.equals(ZERO.subarray(0, bytes.length));
}

function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

function sortedRanges(ranges: readonly ByteRange[], size: number, where: string): ByteRange[] {
  const sorted = [...ranges].filter((r) => r.length > 0).sort((a, b) => a.offset - b.offset);
  let end = 0;
  for (const range of sorted) {
    if (!Number.isSafeInteger(range.offset) || !Number.isSafeInteger(range.length) || range.offset < end)
      throw new StoreError("LOCAL_BUILD_INVALID", `${where}: owned ranges overlap or are not integers`);
    end = range.offset + range.length;
  }
  if (end > size)
    throw new StoreError(
      "LOCAL_BUILD_INVALID",
      `${where}: an owned range ends at ${end}, past ${size} bytes`,
    );
  return sorted;
}

async function readChunk(handle: FileHandle, offset: number, length: number, where: string): Promise<Buffer> {
  const buffer = Buffer.allocUnsafe(length);
  for (let done = 0; done < length; ) {
    const { bytesRead } = await handle.read(buffer, done, length - done, offset + done);
    if (bytesRead === 0)
      throw new StoreError("LOCAL_BUILD_INVALID", `${where} is shorter than build.json says`);
    done += bytesRead;
  }
  return buffer;
}

/** Uploads a build, chunks first and build.json last, so it is visible only once complete; resumable. */
export async function uploadBuild(options: UploadBuildOptions): Promise<UploadReport> {
  const { store, directory, signal } = options;
  const logger = options.logger ?? silentLogger;
  const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
  if (
    !Number.isSafeInteger(chunkSize) ||
    chunkSize % 4096 !== 0 ||
    chunkSize < 4096 ||
    chunkSize > MAX_CHUNK_SIZE
  )
    throw new StoreError("CONFIG_INVALID", `chunk size ${chunkSize} is not a multiple of 4 KiB up to 64 MiB`);
  const compression = options.compression ?? "zstd";
  const concurrency = options.concurrency ?? 4;
  const parsed = storedManifestSchema.safeParse(options.manifest);
  if (!parsed.success)
    throw new StoreError(
      "LOCAL_BUILD_INVALID",
      `build.json of ${directory}: ${z.prettifyError(parsed.error)}`,
    );
  const manifest = parsed.data;
  const id = manifest.id;
  const manifestBytes = Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`);
  const report: UploadReport = {
    build: id,
    alreadyStored: false,
    chunksUploaded: 0,
    chunksSkipped: 0,
    zeroChunks: 0,
    bytesRead: 0,
    bytesUploaded: 0,
  };

  const manifestKey = buildFileKey(id, STORED_BUILD_FILES.manifest);
  if (await store.head(manifestKey, { signal })) {
    const stored = await store.get(manifestKey, { signal });
    if (!stored.equals(manifestBytes))
      throw new StoreError(
        "BUILD_INVALID",
        `build ${id} is already in ${store.description} with another build.json`,
        {
          key: manifestKey,
        },
      );
    return { ...report, alreadyStored: true };
  }

  const put = async (key: string, bytes: Buffer, chunkSignal?: AbortSignal) => {
    await store.put(key, bytes, { signal: chunkSignal ?? signal });
    report.bytesUploaded += bytes.length;
  };

  for (const [name, record] of Object.entries(manifest.files)) {
    if (!record || CHUNKED_FILES.includes(name)) continue;
    const bytes = await readFile(join(directory, name)).catch((cause: unknown) => {
      throw new StoreError("LOCAL_BUILD_INVALID", `${join(directory, name)} cannot be read`, { cause });
    });
    if (bytes.length !== record.sizeBytes || sha256Hex(bytes) !== record.sha256)
      throw new StoreError(
        "LOCAL_BUILD_INVALID",
        `${join(directory, name)} does not match its size and sha256 in build.json`,
      );
    report.bytesRead += bytes.length;
    await put(buildFileKey(id, name), bytes);
  }

  for (const name of CHUNKED_FILES) {
    const record = manifest.files[name];
    if (!record) continue;
    const path = join(directory, name);
    const isMemory = name === STORED_BUILD_FILES.memory;
    const count = Math.ceil(record.sizeBytes / chunkSize);
    const owned = isMemory ? sortedRanges(options.memoryRanges, record.sizeBytes, path) : [];
    const indices = isMemory
      ? chunksOverlapping(owned, chunkSize)
      : Array.from({ length: count }, (_, i) => i);
    const table = await uploadChunks({
      store,
      id,
      name,
      path,
      sizeBytes: record.sizeBytes,
      indices,
      chunkSize,
      compression,
      concurrency,
      report,
      put,
      signal,
      // The memory digest of build.json covers the owned pages in order; the rootfs's, the whole file.
      digestOf: isMemory ? owned : [{ offset: 0, length: record.sizeBytes }],
      expectedDigest: record.sha256,
    });
    await put(chunkTableKey(id, name), Buffer.from(JSON.stringify(table)));
    logger.debug?.({ build: id, file: name, chunks: table.chunks.length }, "chunks uploaded");
  }

  await put(manifestKey, manifestBytes);
  logger.info?.({ ...report }, "build uploaded");
  return report;
}

async function uploadChunks(args: {
  store: BuildStore;
  id: string;
  name: string;
  path: string;
  sizeBytes: number;
  indices: number[];
  chunkSize: number;
  compression: Compression;
  concurrency: number;
  report: UploadReport;
  put: (key: string, bytes: Buffer, signal?: AbortSignal) => Promise<void>;
  signal: AbortSignal | undefined;
  digestOf: ByteRange[];
  expectedDigest: string;
}): Promise<ChunkTable> {
  const { store, id, name, path, sizeBytes, chunkSize, compression, report } = args;
  const handle = await open(path, "r").catch((cause: unknown) => {
    throw new StoreError("LOCAL_BUILD_INVALID", `${path} cannot be opened`, { cause });
  });
  const entries: ChunkEntry[] = [];
  const digest = createHash("sha256");
  let rangeIndex = 0;
  try {
    // Chunks are read in order (the file digest needs it) and uploaded `concurrency` at a time.
    async function* chunks(): AsyncGenerator<{ index: number; bytes: Buffer }> {
      for (const index of args.indices) {
        const offset = index * chunkSize;
        const bytes = await readChunk(handle, offset, Math.min(chunkSize, sizeBytes - offset), path);
        report.bytesRead += bytes.length;
        for (; rangeIndex < args.digestOf.length; rangeIndex++) {
          const range = args.digestOf[rangeIndex] as ByteRange;
          const start = Math.max(range.offset, offset);
          const end = Math.min(range.offset + range.length, offset + bytes.length);
          if (start < end) digest.update(bytes.subarray(start - offset, end - offset));
          if (range.offset + range.length > offset + bytes.length) break;
        }
        yield { index, bytes };
      }
    }
    const inFlight = new Set<Promise<void>>();
    let failure: unknown;
    const controller = new AbortController();
    const signal = args.signal ? AbortSignal.any([args.signal, controller.signal]) : controller.signal;
    for await (const { index, bytes } of chunks()) {
      if (failure !== undefined) break;
      const sha256 = sha256Hex(bytes);
      const offset = index * chunkSize;
      if (isZero(bytes)) {
        entries.push({ index, offset, length: bytes.length, storedLength: 0, sha256, zero: true });
        report.zeroChunks++;
        continue;
      }
      const stored = compressChunk(bytes, compression);
      entries.push({ index, offset, length: bytes.length, storedLength: stored.length, sha256 });
      const key = chunkKey(id, name, index, sha256);
      const upload = (async () => {
        const existing = await store.head(key, { signal });
        if (existing?.sizeBytes === stored.length) {
          report.chunksSkipped++;
          return;
        }
        await args.put(key, stored, signal);
        report.chunksUploaded++;
      })().catch((error: unknown) => {
        failure ??= error;
        controller.abort(error);
      });
      const tracked: Promise<void> = upload.finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
      if (inFlight.size >= args.concurrency) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    if (failure !== undefined) throw failure;
    if (args.digestOf.length > 0 && digest.digest("hex") !== args.expectedDigest)
      throw new StoreError("LOCAL_BUILD_INVALID", `${path} does not match its sha256 in build.json`);
  } finally {
    await handle.close();
  }
  return { schemaVersion: 1, file: name, sizeBytes, chunkSize, compression, chunks: entries };
}
