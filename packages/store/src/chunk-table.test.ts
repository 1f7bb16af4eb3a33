import { describe, expect, it } from "vitest";
import { chunksOverlapping, findChunk, parseChunkTable } from "./chunk-table.ts";

const digest = "a".repeat(64);
const table = (chunks: unknown[], sizeBytes = 10 * 4096) => ({
  schemaVersion: 1,
  file: "memory",
  sizeBytes,
  chunkSize: 4096,
  compression: "zstd",
  chunks,
});

describe("chunk tables", () => {
  it("accepts chunks in place and finds them", () => {
    const parsed = parseChunkTable(
      table([
        { index: 1, offset: 4096, length: 4096, storedLength: 100, sha256: digest },
        { index: 9, offset: 9 * 4096, length: 4096, storedLength: 0, sha256: digest, zero: true },
      ]),
      "t",
    );
    expect(findChunk(parsed, 9)?.zero).toBe(true);
    expect(findChunk(parsed, 2)).toBeUndefined();
  });

  it.each([
    [
      "out of order",
      [
        { index: 2, offset: 8192, length: 4096, storedLength: 1, sha256: digest },
        { index: 1, offset: 4096, length: 4096, storedLength: 1, sha256: digest },
      ],
    ],
    ["misplaced offset", [{ index: 1, offset: 0, length: 4096, storedLength: 1, sha256: digest }]],
    ["wrong length", [{ index: 1, offset: 4096, length: 4095, storedLength: 1, sha256: digest }]],
    ["past the end", [{ index: 10, offset: 40960, length: 4096, storedLength: 1, sha256: digest }]],
    [
      "zero with bytes",
      [{ index: 1, offset: 4096, length: 4096, storedLength: 5, sha256: digest, zero: true }],
    ],
    [
      "a frame far larger than its chunk",
      [{ index: 1, offset: 4096, length: 4096, storedLength: 1 << 20, sha256: digest }],
    ],
    ["a bad digest", [{ index: 1, offset: 4096, length: 4096, storedLength: 1, sha256: "x" }]],
  ])("rejects a table with %s", (_why, chunks) => {
    expect(() => parseChunkTable(table(chunks), "t")).toThrow(
      expect.objectContaining({ code: "BUILD_INVALID" }),
    );
  });

  it("rejects a size that would make too many chunks", () => {
    expect(() => parseChunkTable(table([], 2 ** 40), "t")).toThrow(
      expect.objectContaining({ code: "BUILD_INVALID" }),
    );
  });

  it("lists the chunks that owned ranges touch, once each", () => {
    expect(
      chunksOverlapping(
        [
          { offset: 0, length: 1 },
          { offset: 4095, length: 2 },
          { offset: 5 * 4096, length: 0 },
          { offset: 8 * 4096, length: 4096 },
        ],
        4096,
      ),
    ).toEqual([0, 1, 8]);
  });
});
