import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { kvmSkipReason } from "@sbx/arch/testing";
import { hostFingerprint } from "@sbx/cpu-template";
import { describe, expect, it } from "vitest";

/** What main.ts's olderThan() clears: CPUID leaf 7 subleaf 0, register index (1 = ebx, 2 = ecx), bit. */
const TAKEN_AWAY = [
  { name: "avx512f", register: 1, bit: 16 },
  { name: "avx512dq", register: 1, bit: 17 },
  { name: "avx512bw", register: 1, bit: 30 },
  { name: "avx512vl", register: 1, bit: 31 },
  { name: "gfni", register: 2, bit: 8 },
  { name: "vaes", register: 2, bit: 9 },
  { name: "vpclmulqdq", register: 2, bit: 10 },
];
const main = fileURLToPath(new URL("./main.ts", import.meta.url));
const kvm = kvmSkipReason() === undefined && process.arch === "x64";
if (!kvm) console.log("[mixed-fleet example] skipped: needs /dev/kvm on x86_64 for the host fingerprint");

describe.skipIf(!kvm)("mixed-fleet example", () => {
  it("finds the SIGILL risk without a template and none with the normalized one", () => {
    const output = execFileSync(process.execPath, ["--conditions=@sbx/source", main, "--json"], {
      encoding: "utf8",
      timeout: 120_000,
    });
    const result = JSON.parse(output.trim().split("\n").at(-1)!);
    expect(result.hosts).toBe(2);
    // Exactly the features the example takes away that KVM offers on this host are missing on the
    // simulated older one (read here from the host's leaf 7, not from the example's answer).
    const leaf7 = hostFingerprint().cpuid.get("7.0") ?? [0, 0, 0, 0];
    const expected = TAKEN_AWAY.filter(({ register, bit }) => (leaf7[register]! >>> bit) & 1).map(
      (f) => f.name,
    );
    expect([...result.withoutTemplate.missing].sort()).toEqual(expected.sort());
    expect(result.withoutTemplate.compatible).toBe(expected.length === 0);
    expect(result.withTemplate.compatible).toBe(true);
    if (process.env.FIRECRACKER_BIN) expect(result.firecracker.accepted).toBe(true);
    else expect(result.firecracker.skipped).toMatch(/FIRECRACKER_BIN/);
  });
});
