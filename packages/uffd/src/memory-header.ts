// The memory header: the one record of which build's memory file holds each guest page. It is written
// once, when a build is made, and a restore reads nothing else to decide where a page comes from, so a
// memory file whose holes were filled (a copy, an upload) still restores exactly, and a page's lookup
// costs the same however long the chain of pauses behind it is.
//
// Every build's memory file keeps a page at the page's own guest-memory offset (the layout Firecracker
// writes, holes where the build owns nothing), so an entry names a range and the build that owns it.
//
// Binary layout, little-endian:
//   0  "SBXMEMHD"            8  u32 version (1)      12 u32 block size (4096 or 2 MiB)
//   16 u64 memory size       24 u32 build count      28 u32 entry count
//   32 builds: u8 length + ASCII id, each            then entries: u64 offset, u64 length, u32 build
//   last 32 bytes: sha256 of everything before them
import { createHash } from "node:crypto";
import { closeSync, fstatSync, openSync } from "node:fs";
import { UffdError } from "./errors.ts";
import { type ByteExtent, lseekExtents } from "./layers.ts";
import { resolveLibcSymbols } from "./libc.ts";

/** The memory header format this version reads and writes. */
export const MEMORY_HEADER_VERSION = 1;
const MAGIC = Buffer.from("SBXMEMHD", "ascii");
const FIXED_BYTES = 32;
const ENTRY_BYTES = 20;
const CHECKSUM_BYTES = 32;
/** A layer stack the page-fault server can map (see PageFaultServerOptions.layers). */
export const MAX_HEADER_BUILDS = 256;
const BLOCK_SIZES: readonly number[] = [4096, 2 * 1024 * 1024];
const BUILD_ID = /^[0-9A-Za-z_-]{1,64}$/;

/** A run of guest memory and the build whose memory file serves it. */
export interface MemoryHeaderEntry {
  /** Guest-memory offset, in bytes, block-aligned. */
  offset: number;
  length: number;
  /** Index into `builds`. */
  build: number;
}

/** Which build serves each page of a snapshot's memory: every page exactly once. */
export interface MemoryHeader {
  version: typeof MEMORY_HEADER_VERSION;
  blockSize: number;
  /** Guest memory size in bytes: the entries cover [0, memorySize) exactly once, in order. */
  memorySize: number;
  /** The builds whose memory files the entries point into. */
  builds: string[];
  entries: MemoryHeaderEntry[];
}

function invalid(message: string): UffdError {
  return new UffdError("MEMORY_HEADER_INVALID", `memory header: ${message}`);
}

/** Throws MEMORY_HEADER_INVALID unless every entry is aligned, in range, and the whole memory is covered once. */
export function validateMemoryHeader(header: MemoryHeader): MemoryHeader {
  const { blockSize, memorySize, builds, entries } = header;
  if (header.version !== MEMORY_HEADER_VERSION) throw invalid(`version ${header.version} is not supported`);
  if (!BLOCK_SIZES.includes(blockSize)) throw invalid(`block size ${blockSize} is neither 4 KiB nor 2 MiB`);
  if (!Number.isSafeInteger(memorySize) || memorySize <= 0 || memorySize % blockSize !== 0)
    throw invalid(`memory size ${memorySize} is not a positive multiple of the block size`);
  if (builds.length === 0 || builds.length > MAX_HEADER_BUILDS)
    throw invalid(`${builds.length} builds (1 to ${MAX_HEADER_BUILDS})`);
  if (new Set(builds).size !== builds.length) throw invalid("a build is listed twice");
  for (const id of builds)
    if (!BUILD_ID.test(id)) throw invalid(`build id ${JSON.stringify(id)} is not valid`);
  const used = new Set<number>();
  let next = 0;
  for (const entry of entries) {
    if (entry.offset !== next)
      throw invalid(
        entry.offset < next
          ? `entry at ${entry.offset} overlaps the one before`
          : `pages ${next}..${entry.offset} belong to no build`,
      );
    if (!Number.isSafeInteger(entry.length) || entry.length <= 0 || entry.length % blockSize !== 0)
      throw invalid(`entry at ${entry.offset} has length ${entry.length}, not a multiple of the block size`);
    if (!Number.isInteger(entry.build) || entry.build < 0 || entry.build >= builds.length)
      throw invalid(`entry at ${entry.offset} names build #${entry.build} of ${builds.length}`);
    next = entry.offset + entry.length;
    if (next > memorySize) throw invalid(`entry at ${entry.offset} runs past the memory size ${memorySize}`);
    used.add(entry.build);
  }
  if (next !== memorySize) throw invalid(`pages ${next}..${memorySize} belong to no build`);
  if (used.size !== builds.length) throw invalid("a listed build owns no page");
  return header;
}

/** The header's binary form, versioned and sha256-checked (decodeMemoryHeader reads it back). */
export function encodeMemoryHeader(header: MemoryHeader): Buffer {
  validateMemoryHeader(header);
  const ids = header.builds.map((id) => Buffer.from(id, "ascii"));
  const idBytes = ids.reduce((sum, id) => sum + 1 + id.length, 0);
  const out = Buffer.alloc(FIXED_BYTES + idBytes + header.entries.length * ENTRY_BYTES + CHECKSUM_BYTES);
  MAGIC.copy(out, 0);
  out.writeUInt32LE(header.version, 8);
  out.writeUInt32LE(header.blockSize, 12);
  out.writeBigUInt64LE(BigInt(header.memorySize), 16);
  out.writeUInt32LE(header.builds.length, 24);
  out.writeUInt32LE(header.entries.length, 28);
  let at = FIXED_BYTES;
  for (const id of ids) {
    out.writeUInt8(id.length, at);
    id.copy(out, at + 1);
    at += 1 + id.length;
  }
  for (const entry of header.entries) {
    out.writeBigUInt64LE(BigInt(entry.offset), at);
    out.writeBigUInt64LE(BigInt(entry.length), at + 8);
    out.writeUInt32LE(entry.build, at + 16);
    at += ENTRY_BYTES;
  }
  createHash("sha256").update(out.subarray(0, at)).digest().copy(out, at);
  return out;
}

/** Parses and validates a header from untrusted bytes: any defect is MEMORY_HEADER_INVALID. */
export function decodeMemoryHeader(bytes: Uint8Array): MemoryHeader {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buffer.length < FIXED_BYTES + CHECKSUM_BYTES) throw invalid(`${buffer.length} bytes is too short`);
  if (!buffer.subarray(0, 8).equals(MAGIC)) throw invalid("not a memory header (magic)");
  const body = buffer.subarray(0, buffer.length - CHECKSUM_BYTES);
  const digest = createHash("sha256").update(body).digest();
  if (!digest.equals(buffer.subarray(buffer.length - CHECKSUM_BYTES))) throw invalid("checksum mismatch");
  const version = buffer.readUInt32LE(8);
  if (version !== MEMORY_HEADER_VERSION) throw invalid(`version ${version} is not supported`);
  const buildCount = buffer.readUInt32LE(24);
  const entryCount = buffer.readUInt32LE(28);
  if (buildCount > MAX_HEADER_BUILDS) throw invalid(`${buildCount} builds`);
  const builds: string[] = [];
  let at = FIXED_BYTES;
  for (let i = 0; i < buildCount; i++) {
    if (at >= body.length) throw invalid("truncated in the build list");
    const length = body.readUInt8(at);
    if (at + 1 + length > body.length) throw invalid("truncated in the build list");
    builds.push(body.toString("ascii", at + 1, at + 1 + length));
    at += 1 + length;
  }
  if (body.length - at !== entryCount * ENTRY_BYTES)
    throw invalid(`${body.length - at} bytes of entries for ${entryCount} entries`);
  const entries: MemoryHeaderEntry[] = [];
  for (let i = 0; i < entryCount; i++, at += ENTRY_BYTES) {
    const offset = body.readBigUInt64LE(at);
    const length = body.readBigUInt64LE(at + 8);
    if (offset > BigInt(Number.MAX_SAFE_INTEGER) || length > BigInt(Number.MAX_SAFE_INTEGER))
      throw invalid(`entry ${i} is out of range`);
    entries.push({ offset: Number(offset), length: Number(length), build: body.readUInt32LE(at + 16) });
  }
  return validateMemoryHeader({
    version,
    blockSize: buffer.readUInt32LE(12),
    memorySize: Number(buffer.readBigUInt64LE(16)),
    builds,
    entries,
  });
}

/** A Full snapshot's header: one build owns every page. */
export function fullMemoryHeader(options: {
  build: string;
  memorySize: number;
  blockSize?: number;
}): MemoryHeader {
  return validateMemoryHeader({
    version: MEMORY_HEADER_VERSION,
    blockSize: options.blockSize ?? 4096,
    memorySize: options.memorySize,
    builds: [options.build],
    entries: [{ offset: 0, length: options.memorySize, build: 0 }],
  });
}

/**
 * The header of a Diff build: `ranges` (widened to whole blocks) belong to `build`, every other page
 * to whichever build owned it in `parent`. Builds left owning nothing drop out of the list.
 */
export function overlayMemoryHeader(
  parent: MemoryHeader,
  build: string,
  ranges: readonly ByteExtent[],
): MemoryHeader {
  if (parent.builds.includes(build)) throw invalid(`build ${build} is already in its parent's header`);
  const { blockSize, memorySize } = parent;
  const owned = mergeRanges(
    ranges.map((range) => {
      if (range.offset < 0 || range.length <= 0 || range.offset + range.length > memorySize)
        throw invalid(`range ${range.offset}+${range.length} is outside the ${memorySize}-byte memory`);
      const start = range.offset - (range.offset % blockSize);
      const end = Math.ceil((range.offset + range.length) / blockSize) * blockSize;
      return { offset: start, length: end - start };
    }),
  );
  // One pass over both sorted lists: parent entries cut around the new build's ranges.
  const pieces: { offset: number; length: number; id: string }[] = [];
  let r = 0;
  for (const entry of parent.entries) {
    let cursor = entry.offset;
    const end = entry.offset + entry.length;
    while (cursor < end) {
      while (r < owned.length && (owned[r] as ByteExtent).offset + (owned[r] as ByteExtent).length <= cursor)
        r++;
      const range = owned[r];
      if (range && range.offset <= cursor) {
        const stop = Math.min(end, range.offset + range.length);
        pieces.push({ offset: cursor, length: stop - cursor, id: build });
        cursor = stop;
      } else {
        const stop = Math.min(end, range ? range.offset : end);
        pieces.push({ offset: cursor, length: stop - cursor, id: parent.builds[entry.build] as string });
        cursor = stop;
      }
    }
  }
  return headerFromPieces(blockSize, memorySize, pieces);
}

function headerFromPieces(
  blockSize: number,
  memorySize: number,
  pieces: { offset: number; length: number; id: string }[],
): MemoryHeader {
  const builds: string[] = [];
  const index = new Map<string, number>();
  const entries: MemoryHeaderEntry[] = [];
  for (const piece of pieces) {
    let build = index.get(piece.id);
    if (build === undefined) {
      build = builds.push(piece.id) - 1;
      index.set(piece.id, build);
    }
    const last = entries.at(-1);
    if (last && last.build === build && last.offset + last.length === piece.offset)
      last.length += piece.length;
    else entries.push({ offset: piece.offset, length: piece.length, build });
  }
  if (builds.length > MAX_HEADER_BUILDS)
    throw invalid(`pages from ${builds.length} builds: at most ${MAX_HEADER_BUILDS} (flatten the chain)`);
  return validateMemoryHeader({ version: MEMORY_HEADER_VERSION, blockSize, memorySize, builds, entries });
}

function mergeRanges(ranges: ByteExtent[]): ByteExtent[] {
  const sorted = [...ranges].sort((a, b) => a.offset - b.offset);
  const merged: ByteExtent[] = [];
  for (const range of sorted) {
    const last = merged.at(-1);
    if (last && range.offset <= last.offset + last.length)
      last.length = Math.max(last.length, range.offset + range.length - last.offset);
    else merged.push({ ...range });
  }
  return merged;
}

/** The pages `build` owns according to `header`. */
export function ownedRanges(header: MemoryHeader, build: string): ByteExtent[] {
  const index = header.builds.indexOf(build);
  return header.entries.filter((e) => e.build === index).map((e) => ({ offset: e.offset, length: e.length }));
}

/**
 * The layer stack the page-fault server maps for a header: one layer per build, each with exactly the
 * ranges the header gives it. `pathOf` says where each build's memory file is on this host.
 */
export function memoryHeaderLayers(
  header: MemoryHeader,
  pathOf: (build: string) => string,
): { path: string; ranges: ByteExtent[] }[] {
  return header.builds.map((build) => ({ path: pathOf(build), ranges: ownedRanges(header, build) }));
}

/**
 * A sparse memory file's data extents (SEEK_DATA/SEEK_HOLE): what a Diff snapshot wrote. Read once,
 * when a build is made, to write its header; never at restore.
 */
export function memoryFileExtents(path: string): { size: number; extents: ByteExtent[] } {
  resolveLibcSymbols();
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (cause) {
    throw new UffdError("MEMORY_FILE_INVALID", `cannot open memory file ${path}`, { cause });
  }
  try {
    const size = fstatSync(fd).size;
    return { size, extents: lseekExtents(fd, size) };
  } finally {
    closeSync(fd);
  }
}
