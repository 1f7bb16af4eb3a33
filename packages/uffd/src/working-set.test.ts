import { createHash, randomBytes, randomInt } from "node:crypto";
import { describe, expect, it } from "vitest";
import { UffdError } from "./errors.ts";
import {
  decodeWorkingSet,
  encodeWorkingSet,
  MAX_WORKING_SET_BYTES,
  type WorkingSet,
  workingSetFromTrace,
  workingSetPages,
} from "./working-set.ts";

const PAGE = 4096;
const MEMORY = 256 * PAGE;

function expectInvalid(action: () => unknown, message: RegExp) {
  let caught: unknown;
  try {
    action();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(UffdError);
  expect((caught as UffdError).code).toBe("WORKING_SET_INVALID");
  expect((caught as UffdError).message).toMatch(message);
}

/** Re-signs edited bytes, so a test reaches the structural checks behind the checksum. */
function resign(bytes: Buffer): Buffer {
  const out = Buffer.from(bytes);
  createHash("sha256")
    .update(out.subarray(0, out.length - 32))
    .digest()
    .copy(out, out.length - 32);
  return out;
}

const set = (ranges: { offset: number; length: number }[], memorySize = MEMORY): WorkingSet => ({
  version: 1,
  pageSize: PAGE,
  memorySize,
  ranges,
});

describe("workingSetFromTrace", () => {
  it("keeps first-touch order, drops repeats and out-of-range pages, merges consecutive pages", () => {
    const trace = [5, 6, 7, 2, 6, 3, 300, 9, 10, 4, 255].map((page) => page * PAGE + 17);
    const result = workingSetFromTrace(trace, MEMORY);
    expect(result.ranges).toEqual([
      { offset: 5 * PAGE, length: 3 * PAGE },
      { offset: 2 * PAGE, length: 2 * PAGE },
      { offset: 9 * PAGE, length: 2 * PAGE },
      { offset: 4 * PAGE, length: PAGE },
      { offset: 255 * PAGE, length: PAGE },
    ]);
    expect(workingSetPages(result)).toBe(9);
  });

  it("merges nothing across a jump backwards, even to the next offset of an earlier range", () => {
    const result = workingSetFromTrace(
      [1, 3, 2].map((page) => page * PAGE),
      MEMORY,
    );
    expect(result.ranges.map((r) => r.offset / PAGE)).toEqual([1, 3, 2]);
  });
});

describe("encode and decode", () => {
  it("round-trips random traces", () => {
    for (let round = 0; round < 50; round++) {
      const trace = Array.from({ length: randomInt(0, 400) }, () => randomInt(0, 256) * PAGE);
      const original = workingSetFromTrace(trace, MEMORY);
      expect(decodeWorkingSet(encodeWorkingSet(original))).toEqual(original);
    }
  });

  it("refuses what it would not write", () => {
    expectInvalid(() => encodeWorkingSet(set([{ offset: 100, length: PAGE }])), /page-aligned/);
    expectInvalid(() => encodeWorkingSet(set([{ offset: 0, length: 100 }])), /multiple of 4096/);
    expectInvalid(() => encodeWorkingSet(set([{ offset: MEMORY, length: PAGE }])), /past the memory size/);
    expectInvalid(
      () =>
        encodeWorkingSet(
          set([
            { offset: 0, length: 3 * PAGE },
            { offset: 2 * PAGE, length: PAGE },
          ]),
        ),
      /overlaps/,
    );
  });

  it("reports each defect of hostile bytes with WORKING_SET_INVALID", () => {
    const good = encodeWorkingSet(
      set([
        { offset: 4 * PAGE, length: 2 * PAGE },
        { offset: 0, length: PAGE },
      ]),
    );
    expectInvalid(() => decodeWorkingSet(good.subarray(0, 40)), /too short/);
    expectInvalid(() => decodeWorkingSet(Buffer.alloc(MAX_WORKING_SET_BYTES + 1)), /too long/);
    const flipped = Buffer.from(good);
    flipped[40] = (flipped[40] as number) ^ 1;
    expectInvalid(() => decodeWorkingSet(flipped), /checksum/);
    const magic = Buffer.from(good);
    magic.write("X", 0);
    expectInvalid(() => decodeWorkingSet(resign(magic)), /magic/);
    const version = Buffer.from(good);
    version.writeUInt32LE(2, 8);
    expectInvalid(() => decodeWorkingSet(resign(version)), /version 2/);
    const pageSize = Buffer.from(good);
    pageSize.writeUInt32LE(2 * 1024 * 1024, 12);
    expectInvalid(() => decodeWorkingSet(resign(pageSize)), /page size/);
    const count = Buffer.from(good);
    count.writeUInt32LE(3, 24);
    expectInvalid(() => decodeWorkingSet(resign(count)), /bytes of ranges for 3 ranges/);
    const huge = Buffer.from(good);
    huge.writeBigUInt64LE(1n << 62n, 32);
    expectInvalid(() => decodeWorkingSet(resign(huge)), /too large/);
    const outside = Buffer.from(good);
    outside.writeBigUInt64LE(BigInt(MEMORY), 32);
    expectInvalid(() => decodeWorkingSet(resign(outside)), /past the memory size/);
    const empty = Buffer.from(good);
    empty.writeUInt32LE(0, 32 + 8);
    expectInvalid(() => decodeWorkingSet(resign(empty)), /positive multiple/);
    const overlap = Buffer.from(good);
    overlap.writeBigUInt64LE(BigInt(5 * PAGE), 32 + 12);
    expectInvalid(() => decodeWorkingSet(resign(overlap)), /overlaps/);
  });

  it("fuzz: mutated and random bytes decode to a valid set or WORKING_SET_INVALID, nothing else", () => {
    const base = encodeWorkingSet(
      workingSetFromTrace(
        Array.from({ length: 200 }, () => randomInt(0, 256) * PAGE),
        MEMORY,
      ),
    );
    for (let round = 0; round < 3000; round++) {
      const bytes = round % 3 === 0 ? randomBytes(randomInt(0, 200)) : Buffer.from(base);
      if (round % 3 !== 0) {
        for (let flips = randomInt(1, 6); flips > 0; flips--)
          bytes[randomInt(0, bytes.length)] = randomInt(0, 256);
      }
      const candidate = round % 2 === 0 && bytes.length >= 64 ? resign(bytes) : bytes;
      try {
        const decoded = decodeWorkingSet(candidate);
        for (const range of decoded.ranges)
          expect(range.offset + range.length).toBeLessThanOrEqual(decoded.memorySize);
      } catch (error) {
        expect(error).toBeInstanceOf(UffdError);
        expect((error as UffdError).code).toBe("WORKING_SET_INVALID");
      }
    }
  });
});
