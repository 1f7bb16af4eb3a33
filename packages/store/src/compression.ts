import { constants, zstdCompressSync, zstdDecompressSync } from "node:zlib";
import { StoreError } from "./errors.ts";

/** How chunks are stored: zstd frames, or as they are. */
export type Compression = "zstd" | "none";

/** Level 3 is zstd's default: most of the ratio on guest memory at a fraction of level 19's time. */
export function compressChunk(bytes: Buffer, compression: Compression, level = 3): Buffer {
  if (compression === "none") return bytes;
  return zstdCompressSync(bytes, { params: { [constants.ZSTD_c_compressionLevel]: level } });
}

/**
 * Decompresses a stored chunk, refusing to produce more than `length` bytes, so a hostile frame
 * cannot balloon into gigabytes before its checksum is checked.
 */
export function decompressChunk(
  stored: Buffer,
  compression: Compression,
  length: number,
  key: string,
): Buffer {
  if (compression === "none") return stored;
  try {
    return zstdDecompressSync(stored, { maxOutputLength: length });
  } catch (cause) {
    throw new StoreError("CHUNK_CORRUPT", `${key} is not a zstd frame of at most ${length} bytes`, {
      key,
      cause,
    });
  }
}
