// A chunk table: how one file is cut into fixed-size chunks, which are stored, and how to check them.
// Stored as its own object beside the chunks; read from an untrusted store, so it is bounded and
// checked for consistency, not only for shape.
import { z } from "zod";
import { StoreError } from "./errors.ts";

/** 2^20 chunks of at most 64 MiB bounds a table's size and the memory a reader gives it. */
export const MAX_CHUNKS = 1 << 20;
export const MAX_CHUNK_SIZE = 64 * 1024 * 1024;

const chunkEntrySchema = z.object({
  index: z.number().int().nonnegative(),
  /** Offset and length in the file (uncompressed). */
  offset: z.number().int().nonnegative(),
  length: z.number().int().positive(),
  /** Bytes of the stored object (the zstd frame when compressed); 0 for a zero chunk. */
  storedLength: z.number().int().nonnegative(),
  /** sha256 of the uncompressed bytes: the cache's name for the chunk, and what every read checks. */
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  /** All zero bytes: nothing is stored, a reader makes the zeros. */
  zero: z.boolean().optional(),
});
/** One chunk of a stored file: where it sits, its stored size and its sha256. */
export type ChunkEntry = z.infer<typeof chunkEntrySchema>;

/** How a stored file is cut into chunks (see parseChunkTable for the checks beyond shape). */
export const chunkTableSchema = z.object({
  schemaVersion: z.literal(1),
  file: z.string().min(1),
  sizeBytes: z.number().int().nonnegative(),
  chunkSize: z.number().int().min(4096).max(MAX_CHUNK_SIZE),
  compression: z.enum(["zstd", "none"]),
  /** Sorted by index; a chunk that is absent is not stored (no page of it belongs to this build). */
  chunks: z.array(chunkEntrySchema).max(MAX_CHUNKS),
});
/** A stored file's chunk table. */
export type ChunkTable = z.infer<typeof chunkTableSchema>;

/** Parses and checks a chunk table: every chunk where its index says, inside the file, in order, once. */
export function parseChunkTable(value: unknown, where: string): ChunkTable {
  const parsed = chunkTableSchema.safeParse(value);
  if (!parsed.success)
    throw new StoreError("BUILD_INVALID", `${where} is not a chunk table: ${z.prettifyError(parsed.error)}`);
  const table = parsed.data;
  if (table.chunkSize % 4096 !== 0)
    throw new StoreError(
      "BUILD_INVALID",
      `${where}: chunk size ${table.chunkSize} is not a multiple of 4 KiB`,
    );
  if (Math.ceil(table.sizeBytes / table.chunkSize) > MAX_CHUNKS)
    throw new StoreError(
      "BUILD_INVALID",
      `${where}: ${table.sizeBytes} bytes make more than ${MAX_CHUNKS} chunks`,
    );
  let previous = -1;
  for (const chunk of table.chunks) {
    const expectedLength = Math.min(table.chunkSize, table.sizeBytes - chunk.index * table.chunkSize);
    if (
      chunk.index <= previous ||
      chunk.offset !== chunk.index * table.chunkSize ||
      chunk.length !== expectedLength ||
      (chunk.zero === true) !== (chunk.storedLength === 0) ||
      chunk.storedLength > chunk.length + 65_536
    )
      throw new StoreError("BUILD_INVALID", `${where}: chunk ${chunk.index} is out of order or out of place`);
    previous = chunk.index;
  }
  return table;
}

/** The chunk holding `offset`, if the table stores it. */
export function findChunk(table: ChunkTable, index: number): ChunkEntry | undefined {
  let low = 0;
  let high = table.chunks.length - 1;
  while (low <= high) {
    const middle = (low + high) >> 1;
    const chunk = table.chunks[middle] as ChunkEntry;
    if (chunk.index === index) return chunk;
    if (chunk.index < index) low = middle + 1;
    else high = middle - 1;
  }
  return undefined;
}

/** Indices of the chunks that overlap any of `ranges`, ascending, once each. */
export function chunksOverlapping(
  ranges: readonly { offset: number; length: number }[],
  chunkSize: number,
): number[] {
  const indices = new Set<number>();
  for (const range of ranges) {
    if (range.length <= 0) continue;
    const first = Math.floor(range.offset / chunkSize);
    const last = Math.floor((range.offset + range.length - 1) / chunkSize);
    for (let index = first; index <= last; index++) indices.add(index);
  }
  return [...indices].sort((a, b) => a - b);
}
