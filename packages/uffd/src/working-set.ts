// The working set: the memory-file pages a fresh restore of a build touched before its guest was ready,
// in first-touch order, recorded once when the build is made and prefetched on every later restore.
// Ranges merge pages that were touched one right after the other at consecutive offsets, so a guest
// that walks memory linearly costs one range, and the order of first touch is kept.
//
// Binary layout, little-endian:
//   0  "SBXWKSET"            8  u32 version (1)      12 u32 page size (4096)
//   16 u64 memory size       24 u32 range count      28 u32 zero
//   32 ranges: u64 offset (bytes, page-aligned), u32 page count, each
//   last 32 bytes: sha256 of everything before them
// The file is only ever a hint: a stale or foreign one costs a restore time, never correctness, because
// the page-fault server copies the listed pages from the build's own memory (see PageFaultServer's
// `workingSet`). It is still decoded as hostile input.
import { createHash } from "node:crypto";
import { UffdError } from "./errors.ts";

/** The working-set file format this version reads and writes. */
export const WORKING_SET_VERSION = 1;
/** The page size working-set ranges are aligned to. */
export const WORKING_SET_PAGE_SIZE = 4096;
/** 4 GiB of pages in separate ranges, far above any guest's boot working set: a bound on a file's size. */
export const MAX_WORKING_SET_RANGES = 1 << 20;
const MAGIC = Buffer.from("SBXWKSET", "ascii");
const FIXED_BYTES = 32;
const RANGE_BYTES = 12;
const CHECKSUM_BYTES = 32;
/** The largest well-formed file: a reader refuses anything longer before hashing it. */
export const MAX_WORKING_SET_BYTES = FIXED_BYTES + MAX_WORKING_SET_RANGES * RANGE_BYTES + CHECKSUM_BYTES;

/** A run of memory-file pages the guest touched, in first-touch order. */
export interface WorkingSetRange {
  /** Memory-file offset in bytes, page-aligned. */
  offset: number;
  /** Bytes, a positive multiple of the page size. */
  length: number;
}

/** The pages a guest touched after a restore, in order: what the next restore prefetches. */
export interface WorkingSet {
  version: typeof WORKING_SET_VERSION;
  pageSize: typeof WORKING_SET_PAGE_SIZE;
  /** The memory size the set was recorded against: every range lies inside it. */
  memorySize: number;
  /** In first-touch order; no page is in two ranges. */
  ranges: WorkingSetRange[];
}

function invalid(message: string): UffdError {
  return new UffdError("WORKING_SET_INVALID", `working set: ${message}`);
}

/** Throws WORKING_SET_INVALID unless every range is aligned, inside the memory, and no page is listed twice. */
export function validateWorkingSet(set: WorkingSet): WorkingSet {
  const { memorySize, ranges } = set;
  if (set.version !== WORKING_SET_VERSION) throw invalid(`version ${set.version} is not supported`);
  if (set.pageSize !== WORKING_SET_PAGE_SIZE) throw invalid(`page size ${set.pageSize} is not 4096`);
  if (!Number.isSafeInteger(memorySize) || memorySize <= 0 || memorySize % WORKING_SET_PAGE_SIZE !== 0)
    throw invalid(`memory size ${memorySize} is not a positive multiple of 4096`);
  if (ranges.length > MAX_WORKING_SET_RANGES)
    throw invalid(`${ranges.length} ranges (at most ${MAX_WORKING_SET_RANGES})`);
  for (const { offset, length } of ranges) {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % WORKING_SET_PAGE_SIZE !== 0)
      throw invalid(`range offset ${offset} is not a page-aligned offset`);
    if (!Number.isSafeInteger(length) || length <= 0 || length % WORKING_SET_PAGE_SIZE !== 0)
      throw invalid(`range at ${offset} has length ${length}, not a positive multiple of 4096`);
    if (offset + length > memorySize)
      throw invalid(`range at ${offset}+${length} runs past the memory size ${memorySize}`);
  }
  const sorted = ranges.toSorted((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const before = sorted[i - 1] as WorkingSetRange;
    const range = sorted[i] as WorkingSetRange;
    if (range.offset < before.offset + before.length)
      throw invalid(`range at ${range.offset} overlaps the one at ${before.offset}`);
  }
  return set;
}

/**
 * The working set of a fault trace (memory-file offsets in the order they were served, as
 * `PageFaultServer.faultTrace()` returns them): each page once, at its first touch, pages outside the
 * memory dropped, and a page that directly follows the previous one in both order and offset merged
 * into its range.
 */
export function workingSetFromTrace(offsets: readonly number[], memorySize: number): WorkingSet {
  const seen = new Set<number>();
  const ranges: WorkingSetRange[] = [];
  for (const offset of offsets) {
    if (!Number.isSafeInteger(offset) || offset < 0) continue;
    const page = offset - (offset % WORKING_SET_PAGE_SIZE);
    if (page + WORKING_SET_PAGE_SIZE > memorySize || seen.has(page)) continue;
    seen.add(page);
    const last = ranges.at(-1);
    if (last && last.offset + last.length === page) last.length += WORKING_SET_PAGE_SIZE;
    else ranges.push({ offset: page, length: WORKING_SET_PAGE_SIZE });
    if (ranges.length > MAX_WORKING_SET_RANGES) {
      ranges.pop(); // the rest is left to on-demand faults
      break;
    }
  }
  return validateWorkingSet({
    version: WORKING_SET_VERSION,
    pageSize: WORKING_SET_PAGE_SIZE,
    memorySize,
    ranges,
  });
}

/** Pages the set lists. */
export function workingSetPages(set: WorkingSet): number {
  return set.ranges.reduce((sum, range) => sum + range.length / WORKING_SET_PAGE_SIZE, 0);
}

/** The working set's binary form, versioned and sha256-checked. */
export function encodeWorkingSet(set: WorkingSet): Buffer {
  validateWorkingSet(set);
  const out = Buffer.alloc(FIXED_BYTES + set.ranges.length * RANGE_BYTES + CHECKSUM_BYTES);
  MAGIC.copy(out, 0);
  out.writeUInt32LE(set.version, 8);
  out.writeUInt32LE(set.pageSize, 12);
  out.writeBigUInt64LE(BigInt(set.memorySize), 16);
  out.writeUInt32LE(set.ranges.length, 24);
  let at = FIXED_BYTES;
  for (const range of set.ranges) {
    out.writeBigUInt64LE(BigInt(range.offset), at);
    out.writeUInt32LE(range.length / WORKING_SET_PAGE_SIZE, at + 8);
    at += RANGE_BYTES;
  }
  createHash("sha256").update(out.subarray(0, at)).digest().copy(out, at);
  return out;
}

/** Parses and validates a working set from untrusted bytes: any defect is WORKING_SET_INVALID. */
export function decodeWorkingSet(bytes: Uint8Array): WorkingSet {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buffer.length < FIXED_BYTES + CHECKSUM_BYTES) throw invalid(`${buffer.length} bytes is too short`);
  if (buffer.length > MAX_WORKING_SET_BYTES) throw invalid(`${buffer.length} bytes is too long`);
  if (!buffer.subarray(0, 8).equals(MAGIC)) throw invalid("not a working set (magic)");
  const body = buffer.subarray(0, buffer.length - CHECKSUM_BYTES);
  const digest = createHash("sha256").update(body).digest();
  if (!digest.equals(buffer.subarray(buffer.length - CHECKSUM_BYTES))) throw invalid("checksum mismatch");
  const version = buffer.readUInt32LE(8);
  if (version !== WORKING_SET_VERSION) throw invalid(`version ${version} is not supported`);
  const pageSize = buffer.readUInt32LE(12);
  if (pageSize !== WORKING_SET_PAGE_SIZE) throw invalid(`page size ${pageSize} is not 4096`);
  const memorySize = buffer.readBigUInt64LE(16);
  if (memorySize > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`memory size ${memorySize} is too large`);
  const count = buffer.readUInt32LE(24);
  if (buffer.readUInt32LE(28) !== 0) throw invalid("reserved field is not zero");
  if (body.length - FIXED_BYTES !== count * RANGE_BYTES)
    throw invalid(`${body.length - FIXED_BYTES} bytes of ranges for ${count} ranges`);
  const ranges: WorkingSetRange[] = [];
  for (let i = 0, at = FIXED_BYTES; i < count; i++, at += RANGE_BYTES) {
    const offset = body.readBigUInt64LE(at);
    if (offset > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`range offset ${offset} is too large`);
    ranges.push({ offset: Number(offset), length: body.readUInt32LE(at + 8) * WORKING_SET_PAGE_SIZE });
  }
  return validateWorkingSet({
    version: WORKING_SET_VERSION,
    pageSize: WORKING_SET_PAGE_SIZE,
    memorySize: Number(memorySize),
    ranges,
  });
}
