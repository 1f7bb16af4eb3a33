import { describe, expect, it } from "vitest";
import { checkCompatibility } from "./compat.ts";
import type { Fingerprint } from "./fingerprint.ts";

const PFR0 = "0x603000000013c020";

/** An arm64 host with ID_AA64PFR0_EL1 = fp/asimd implemented, EL0-EL3 AArch64, and the given GIC field. */
function arm64Host(gic: number, kernel = "6.1.100"): Fingerprint {
  const pfr0 = 0x1111n | (BigInt(gic) << 24n);
  return {
    arch: "arm64",
    vendor: "arm64:0x41",
    cpu: { implementer: 0x41, part: 0xd0c },
    firecrackerVersion: "1.14.2",
    kernelVersion: kernel,
    microcodeVersion: "unknown",
    cpuid: new Map(),
    msrs: new Map(),
    registers: new Map([[PFR0, pfr0]]),
    kvmCapabilities: [],
  };
}

describe("checkCompatibility on arm64", () => {
  it("names a GIC version change as a reason, whatever the template", () => {
    const same = checkCompatibility({ source: arm64Host(1), target: arm64Host(1) });
    expect(same).toMatchObject({ compatible: true, reasons: [] });
    const moved = checkCompatibility({ source: arm64Host(1), target: arm64Host(3) });
    expect(moved.compatible).toBe(false);
    expect(moved.reasons).toEqual([
      expect.stringMatching(/GIC version differs \(ID_AA64PFR0_EL1\.GIC 1 → 3\)/),
    ]);
    // An older GIC on the target is also a missing feature, by name.
    const older = checkCompatibility({ source: arm64Host(3), target: arm64Host(1) });
    expect(older.missing.map((m) => m.name)).toContain("gic");
  });

  it("says nothing about the GIC when a fingerprint lacks ID_AA64PFR0_EL1", () => {
    const bare = { ...arm64Host(1), registers: new Map() };
    expect(checkCompatibility({ source: bare, target: arm64Host(3) }).reasons).toEqual([]);
  });
});
