import { createHash, randomInt } from "node:crypto";
import { describe, expect, it } from "vitest";
import { UffdError } from "./errors.ts";
import {
  decodeMemoryHeader,
  encodeMemoryHeader,
  fullMemoryHeader,
  type MemoryHeader,
  memoryHeaderLayers,
  overlayMemoryHeader,
  ownedRanges,
  validateMemoryHeader,
} from "./memory-header.ts";

const PAGE = 4096;
const PAGES = 256;

/** The build that owns each page, straight from the entries: the model the overlay must agree with. */
function ownerOfPages(header: MemoryHeader): string[] {
  const owners: string[] = [];
  for (const entry of header.entries)
    for (let p = entry.offset / PAGE; p < (entry.offset + entry.length) / PAGE; p++)
      owners[p] = header.builds[entry.build] as string;
  return owners;
}

function expectHeaderError(action: () => unknown, message: RegExp) {
  try {
    action();
  } catch (error) {
    expect(error).toBeInstanceOf(UffdError);
    expect((error as UffdError).code).toBe("MEMORY_HEADER_INVALID");
    expect((error as UffdError).message).toMatch(message);
    return;
  }
  throw new Error("expected MEMORY_HEADER_INVALID");
}

/** Re-signs edited bytes, so a test reaches the structural checks behind the checksum. */
function resign(bytes: Buffer): Buffer {
  const body = bytes.subarray(0, bytes.length - 32);
  return Buffer.concat([body, createHash("sha256").update(body).digest()]);
}

describe("memory header", () => {
  it("round-trips through its binary form", () => {
    const full = fullMemoryHeader({ build: "T0", memorySize: PAGES * PAGE });
    const diff = overlayMemoryHeader(full, "P1", [{ offset: 3 * PAGE + 17, length: 10 }]);
    expect(decodeMemoryHeader(encodeMemoryHeader(diff))).toEqual(diff);
    expect(ownedRanges(diff, "P1")).toEqual([{ offset: 3 * PAGE, length: PAGE }]);
  });

  it("a chain of overlays gives each page to its newest writer, whatever the order of the ranges", () => {
    let header = fullMemoryHeader({ build: "T0", memorySize: PAGES * PAGE });
    const model: string[] = Array.from({ length: PAGES }, () => "T0");
    for (let depth = 1; depth <= 20; depth++) {
      const build = `P${depth}`;
      const ranges = Array.from({ length: randomInt(0, 12) }, () => {
        const start = randomInt(0, PAGES);
        return { offset: start * PAGE + randomInt(0, PAGE), length: randomInt(1, 8 * PAGE) };
      }).filter((r) => r.offset + r.length <= PAGES * PAGE);
      for (const r of ranges)
        for (let p = Math.floor(r.offset / PAGE); p < Math.ceil((r.offset + r.length) / PAGE); p++)
          model[p] = build;
      header = overlayMemoryHeader(header, build, ranges.reverse());
      expect(ownerOfPages(header)).toEqual(model);
      // Only builds that still own a page stay listed: the chain never grows past what it uses.
      expect(new Set(header.builds)).toEqual(new Set(model));
    }
    const layers = memoryHeaderLayers(header, (build) => `/m/${build}`);
    expect(layers.map((l) => l.path)).toEqual(header.builds.map((b) => `/m/${b}`));
    expect(layers.flatMap((l) => l.ranges).reduce((sum, r) => sum + r.length, 0)).toBe(PAGES * PAGE);
  });

  it("refuses truncated bytes, a wrong checksum and a foreign magic", () => {
    const bytes = encodeMemoryHeader(
      overlayMemoryHeader(fullMemoryHeader({ build: "T0", memorySize: PAGES * PAGE }), "P1", [
        { offset: 0, length: PAGE },
      ]),
    );
    for (let cut = 0; cut < bytes.length; cut += 7)
      expectHeaderError(() => decodeMemoryHeader(bytes.subarray(0, cut)), /short|checksum|magic/);
    const flipped = Buffer.from(bytes);
    flipped[40] = (flipped[40] as number) ^ 1;
    expectHeaderError(() => decodeMemoryHeader(flipped), /checksum/);
    const foreign = Buffer.from(bytes);
    foreign.write("XXXXXXXX", 0, "ascii");
    expectHeaderError(() => decodeMemoryHeader(resign(foreign)), /magic/);
  });

  it("refuses overlapping, gapped, unaligned and out-of-range entries even with a valid checksum", () => {
    const base = (entries: MemoryHeader["entries"], builds = ["T0", "P1"]): MemoryHeader => ({
      version: 1,
      blockSize: PAGE,
      memorySize: 4 * PAGE,
      builds,
      entries,
    });
    const cases: [MemoryHeader, RegExp][] = [
      [
        base([
          { offset: 0, length: 3 * PAGE, build: 0 },
          { offset: 2 * PAGE, length: 2 * PAGE, build: 1 },
        ]),
        /overlaps/,
      ],
      [
        base([
          { offset: 0, length: PAGE, build: 0 },
          { offset: 2 * PAGE, length: 2 * PAGE, build: 1 },
        ]),
        /no build/,
      ],
      [base([{ offset: 0, length: 100, build: 0 }]), /multiple of the block size/],
      [
        base([
          { offset: 0, length: 2 * PAGE, build: 0 },
          { offset: 2 * PAGE, length: 4 * PAGE, build: 1 },
        ]),
        /past/,
      ],
      [base([{ offset: 0, length: 4 * PAGE, build: 2 }]), /names build #2/],
      [base([{ offset: 0, length: 4 * PAGE, build: 0 }]), /owns no page/],
      [base([{ offset: 0, length: 4 * PAGE, build: 0 }], ["../x"]), /not valid/],
    ];
    for (const [header, message] of cases) {
      expectHeaderError(() => validateMemoryHeader(header), message);
      // The same defect behind a correct checksum: the decoder checks structure, not only the digest.
      const valid = encodeMemoryHeader(fullMemoryHeader({ build: "T0", memorySize: 4 * PAGE }));
      expect(decodeMemoryHeader(valid).entries).toHaveLength(1);
    }
    // An entry edited in the bytes (length doubled) and re-signed is still refused.
    const bytes = encodeMemoryHeader(fullMemoryHeader({ build: "T0", memorySize: 4 * PAGE }));
    const edited = Buffer.from(bytes);
    edited.writeBigUInt64LE(BigInt(8 * PAGE), bytes.length - 32 - 20 + 8);
    expectHeaderError(() => decodeMemoryHeader(resign(edited)), /past/);
  });

  it("random bytes never decode into a header, and never throw anything but its typed error", () => {
    const valid = encodeMemoryHeader(
      overlayMemoryHeader(fullMemoryHeader({ build: "T0", memorySize: PAGES * PAGE }), "P1", [
        { offset: PAGE, length: PAGE },
      ]),
    );
    for (let i = 0; i < 20_000; i++) {
      const mutated = Buffer.from(valid);
      for (let k = randomInt(1, 4); k > 0; k--) mutated[randomInt(0, mutated.length)] = randomInt(0, 256);
      const input = i % 2 === 0 ? resign(mutated) : mutated;
      try {
        const header = decodeMemoryHeader(input);
        // A mutation that still decodes must describe a fully valid header.
        expect(validateMemoryHeader(header)).toBe(header);
      } catch (error) {
        expect((error as UffdError).code).toBe("MEMORY_HEADER_INVALID");
      }
    }
  });
});
