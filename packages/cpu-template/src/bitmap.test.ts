import { describe, expect, it } from "vitest";
import { applyBitmap, bitmapValue, combineBitmaps, parseBitmap, serializeBitmap } from "./bitmap.ts";
import { CpuTemplateError } from "./errors.ts";

describe("bitmaps", () => {
  it("parse 0/1/x with separators, apply to a register, and serialize back", () => {
    const b = parseBitmap("0b1x0_x");
    expect(b).toEqual({ width: 4, mask: 0b1010n, value: 0b1000n });
    expect(applyBitmap(b, 0b0111n)).toBe(0b1101n);
    expect(applyBitmap(b, 0b0000n)).toBe(0b1000n);
    expect(serializeBitmap(b)).toBe("0b1x0x");
    const full = "0bxxxx000000000011xx00011011110010";
    expect(serializeBitmap(parseBitmap(full))).toBe(full);
  });

  it("combine: the later bitmap's decided bits win", () => {
    const c = combineBitmaps(parseBitmap("0b11xx"), parseBitmap("0bx0x1"));
    expect(serializeBitmap(c)).toBe("0b10x1");
  });

  it("refuse malformed bitmaps and don't-care bits where a value is needed", () => {
    for (const bad of ["1010", "0b", "0b102", "0b__", `0b${"1".repeat(129)}`])
      expect(() => parseBitmap(bad)).toThrow(CpuTemplateError);
    expect(bitmapValue("0b0000_0101")).toBe(5n);
    expect(() => bitmapValue("0b01x1")).toThrow(/don't-care/);
  });
});
