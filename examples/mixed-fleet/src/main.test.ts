import { execFileSync } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const main = fileURLToPath(new URL("./main.ts", import.meta.url));
const kvm = (() => {
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    return process.arch === "x64";
  } catch {
    return false;
  }
})();
if (!kvm) console.log("[mixed-fleet example] skipped: needs /dev/kvm on x86_64 for the host fingerprint");

describe.skipIf(!kvm)("mixed-fleet example", () => {
  it("finds the SIGILL risk without a template and none with the normalized one", () => {
    const output = execFileSync(process.execPath, ["--conditions=@sbx/source", main, "--json"], {
      encoding: "utf8",
      timeout: 120_000,
    });
    const result = JSON.parse(output.trim().split("\n").at(-1)!);
    expect(result.hosts).toBe(2);
    // Only features this host has can be missing on the simulated older one.
    if (result.withoutTemplate.missing.length > 0) {
      expect(result.withoutTemplate.compatible).toBe(false);
      for (const name of result.withoutTemplate.missing) expect(name).toMatch(/avx512|gfni|vaes|vpclmulqdq/);
    }
    expect(result.withTemplate.compatible).toBe(true);
    if (process.env.FIRECRACKER_BIN) expect(result.firecracker.accepted).toBe(true);
    else expect(result.firecracker.skipped).toMatch(/FIRECRACKER_BIN/);
  });
});
