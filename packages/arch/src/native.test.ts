import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { addressOf, libc, nativeView, resolveLibcSymbols } from "./native.ts";

// <asm-generic/errno-base.h>, <sys/mman.h>
const EBADF = 9;
const PROT_READ_WRITE = 0x3;
const MAP_PRIVATE_ANONYMOUS = 0x22;

/** Every module specifier the main entry loads, following its relative imports. */
function mainEntryImports(): Set<string> {
  const seen = new Set<string>();
  const bare = new Set<string>();
  const visit = (url: URL) => {
    if (seen.has(url.href)) return;
    seen.add(url.href);
    const source = readFileSync(url, "utf8");
    for (const [, specifier] of source.matchAll(/^(?:import|export)\s[^;]*?from\s+"([^"]+)"/gms)) {
      if (specifier?.startsWith(".")) visit(new URL(specifier, url));
      else if (specifier) bare.add(specifier);
    }
  };
  visit(new URL("./index.ts", import.meta.url));
  return bare;
}

describe("@sbx/arch/native", () => {
  it("returns a failing call's value and errno", () => {
    expect(libc.close(-1)).toEqual({ value: -1, errno: EBADF });
  });

  it("maps memory and views it without a copy", () => {
    resolveLibcSymbols();
    const length = 4096;
    const address = libc.mmap(0, length, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS, -1, 0).value;
    expect(address).toBeGreaterThan(0);
    try {
      nativeView(address, length).write("written through one view", 100);
      expect(nativeView(address, length).toString("utf8", 100, 124)).toBe("written through one view");
    } finally {
      expect(libc.munmap(address, length).value).toBe(0);
    }
  });

  it("gives the address of shared memory only, and native code writing there is seen by JS", () => {
    expect(() => addressOf(new Uint8Array(8))).toThrow(TypeError);
    const shared = new Uint8Array(new SharedArrayBuffer(16));
    nativeView(addressOf(shared), 16).fill(7, 4, 8);
    expect([...shared.subarray(0, 10)]).toEqual([0, 0, 0, 0, 7, 7, 7, 7, 0, 0]);
  });

  it("stays out of the main entry, which needs nothing but zod", () => {
    const external = [...mainEntryImports()].filter((specifier) => !specifier.startsWith("node:"));
    expect(external).toEqual(["zod"]);
    const manifest = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
    expect(Object.keys(manifest.dependencies)).toEqual(["zod"]);
    expect(manifest.peerDependenciesMeta["ffi-rs"]).toEqual({ optional: true });
  });
});
