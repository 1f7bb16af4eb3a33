// Firecracker's template bitmaps: "0b" then bits MSB first, `0` clear, `1` set, `x` leave as is, `_` a
// separator. A bitmap is a mask (the bits it decides) and a value (what it sets them to).
import { CpuTemplateError } from "./errors.ts";

/** A parsed template bitmap: the bits it decides (mask) and what it sets them to (value). */
export interface Bitmap {
  /** Bits written in the string (separators excluded). */
  width: number;
  mask: bigint;
  value: bigint;
}

/** Parses a `0b[01x_]` bitmap of at most `maxWidth` bits (INVALID_BITMAP otherwise). */
export function parseBitmap(text: string, maxWidth = 128): Bitmap {
  const match = /^0b([01x_]+)$/.exec(text);
  if (!match)
    throw new CpuTemplateError("INVALID_BITMAP", `${JSON.stringify(text)} is not a 0b[01x_] bitmap`);
  const bits = (match[1] as string).replaceAll("_", "");
  if (bits.length === 0 || bits.length > maxWidth)
    throw new CpuTemplateError(
      "INVALID_BITMAP",
      `${JSON.stringify(text)} has ${bits.length} bits; at most ${maxWidth}`,
    );
  let mask = 0n;
  let value = 0n;
  for (const bit of bits) {
    mask <<= 1n;
    value <<= 1n;
    if (bit !== "x") {
      mask |= 1n;
      if (bit === "1") value |= 1n;
    }
  }
  return { width: bits.length, mask, value };
}

/** The register value a guest sees after the bitmap is applied. */
export function applyBitmap(bitmap: Bitmap, register: bigint): bigint {
  return (register & ~bitmap.mask) | bitmap.value;
}

/** `later` applied after `earlier`: later's decided bits win. */
export function combineBitmaps(earlier: Bitmap, later: Bitmap): Bitmap {
  return {
    width: Math.max(earlier.width, later.width),
    mask: earlier.mask | later.mask,
    value: (earlier.value & ~later.mask) | later.value,
  };
}

/** Writes a bitmap back in Firecracker's `0b` form, `x` for the bits it leaves alone. */
export function serializeBitmap(bitmap: Bitmap): string {
  let out = "";
  for (let i = bitmap.width - 1; i >= 0; i--) {
    const bit = 1n << BigInt(i);
    out += bitmap.mask & bit ? (bitmap.value & bit ? "1" : "0") : "x";
  }
  return `0b${out}`;
}

/** A fully specified bitmap (a fingerprint's register value) as a number. */
export function bitmapValue(text: string): bigint {
  const bitmap = parseBitmap(text);
  if (bitmap.mask !== (1n << BigInt(bitmap.width)) - 1n)
    throw new CpuTemplateError("INVALID_BITMAP", `${text} has don't-care bits where a value is needed`);
  return bitmap.value;
}
