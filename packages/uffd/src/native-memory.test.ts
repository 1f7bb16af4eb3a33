import { describe, expect, it } from "vitest";
import { NativeMemory } from "./native-memory.ts";

describe("NativeMemory", () => {
  it("stores u64 values little-endian, across the 32-bit boundary, as the kernel reads them", () => {
    const memory = new NativeMemory(4096);
    try {
      for (const value of [0, 1, 0xffff_ffff, 0x1_0000_0000, 0x7f12_3456_7000, Number.MAX_SAFE_INTEGER]) {
        memory.setU64(8, value);
        expect(memory.view.getBigUint64(8, true)).toBe(BigInt(value));
        expect(memory.u64(8)).toBe(value);
      }
    } finally {
      memory.free();
    }
  });

  it("refuses what a u64 field cannot hold exactly", () => {
    const memory = new NativeMemory(4096);
    try {
      for (const bad of [-1, 1.5, 2 ** 53, Number.NaN])
        expect(() => memory.setU64(0, bad)).toThrow(RangeError);
    } finally {
      memory.free();
    }
  });
});
