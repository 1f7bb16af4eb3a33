import type { BuildStore } from "./build-store.ts";
import type { ChunkEntry, ChunkTable } from "./chunk-table.ts";
import { parseChunkTable } from "./chunk-table.ts";
import { decompressChunk } from "./compression.ts";
import { StoreError } from "./errors.ts";
import { chunkKey, chunkTableKey } from "./layout.ts";

/** Counts what a reader took from the store, for tests, benches and `bytes fetched / memory size`. */
export interface FetchCounter {
  requests: number;
  /** Bytes as stored (compressed). */
  storedBytes: number;
}

/**
 * One chunk's uncompressed bytes from the store (zero chunks are made, not fetched). The caller checks
 * the sha256; the length is bounded here so a hostile frame cannot grow past the chunk.
 */
export async function fetchChunk(
  store: BuildStore,
  build: string,
  table: ChunkTable,
  chunk: ChunkEntry,
  signal?: AbortSignal,
  counter?: FetchCounter,
): Promise<Buffer> {
  if (chunk.zero) return Buffer.alloc(chunk.length);
  const key = chunkKey(build, table.file, chunk.index, chunk.sha256);
  const stored = await store.get(key, { signal, offset: 0, length: chunk.storedLength });
  if (counter) {
    counter.requests++;
    counter.storedBytes += stored.length;
  }
  if (stored.length !== chunk.storedLength)
    throw new StoreError(
      "CHUNK_CORRUPT",
      `${key} has ${stored.length} bytes, its table says ${chunk.storedLength}`,
      {
        key,
      },
    );
  const bytes = decompressChunk(stored, table.compression, chunk.length, key);
  if (bytes.length !== chunk.length)
    throw new StoreError(
      "CHUNK_CORRUPT",
      `${key} holds ${bytes.length} bytes, its table says ${chunk.length}`,
      { key },
    );
  return bytes;
}

/** A table of MAX_CHUNKS entries is about 150 MiB of JSON; anything larger is not a table. */
const MAX_TABLE_BYTES = 192 * 1024 * 1024;

/** Reads and checks the chunk table of a build's file from the store. */
export async function fetchChunkTable(
  store: BuildStore,
  build: string,
  file: string,
  signal?: AbortSignal,
): Promise<ChunkTable> {
  const key = chunkTableKey(build, file);
  const bytes = await store.get(key, { signal, maxBytes: MAX_TABLE_BYTES });
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString("utf8"));
  } catch (cause) {
    throw new StoreError("BUILD_INVALID", `${key} in ${store.description} is not JSON`, { key, cause });
  }
  const table = parseChunkTable(value, key);
  if (table.file !== file)
    throw new StoreError("BUILD_INVALID", `${key} describes ${table.file}, not ${file}`, { key });
  return table;
}
