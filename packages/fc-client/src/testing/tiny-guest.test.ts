import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FirecrackerLaunchError } from "../launch-error.ts";
import {
  buildTestGuest,
  expectedGuestChecksums,
  parseTestGuestLine,
  TEST_GUEST_CFLAGS,
  testGuestSourceDir,
} from "./tiny-guest.ts";

function hasGcc(): boolean {
  try {
    execFileSync("gcc", ["--version"], { stdio: "ignore" });
    return process.arch === "x64";
  } catch {
    return false;
  }
}
const gccReason = hasGcc() ? undefined : "gcc for x86_64 not available";
if (gccReason) console.log(`[fc-client] test guest build tests skipped: ${gccReason}`);

/** Program headers of a 64-bit little-endian ELF. */
function programHeaders(
  path: string,
): { type: number; offset: number; vaddr: number; paddr: number; filesz: number }[] {
  const elf = readFileSync(path);
  const phoff = Number(elf.readBigUInt64LE(32));
  const phentsize = elf.readUInt16LE(54);
  const phnum = elf.readUInt16LE(56);
  return Array.from({ length: phnum }, (_, i) => {
    const at = phoff + i * phentsize;
    return {
      type: elf.readUInt32LE(at),
      offset: Number(elf.readBigUInt64LE(at + 8)),
      vaddr: Number(elf.readBigUInt64LE(at + 16)),
      paddr: Number(elf.readBigUInt64LE(at + 24)),
      filesz: Number(elf.readBigUInt64LE(at + 32)),
    };
  });
}

describe("test guest", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sbx-guest-test-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("ships its C source and linker script and builds without -march=native", () => {
    const files = [
      join(testGuestSourceDir(), "sbx-test-guest.c"),
      join(testGuestSourceDir(), "sbx-test-guest.ld"),
    ];
    for (const file of files) expect(readFileSync(file, "utf8").length).toBeGreaterThan(100);
    expect(TEST_GUEST_CFLAGS.some((flag) => flag.startsWith("-march"))).toBe(false);
    expect(TEST_GUEST_CFLAGS).toEqual(expect.arrayContaining(["-ffreestanding", "-nostdlib", "-static"]));
  });

  it.skipIf(gccReason !== undefined)(
    `builds an x86_64 ELF with one PT_LOAD at 1 MiB, cached by source hash${gccReason ? ` (skipped: ${gccReason})` : ""}`,
    async () => {
      const built = await buildTestGuest({ outDir: dir });
      expect(built.cached).toBe(false);
      expect(built.sourceHash).toMatch(/^[0-9a-f]{64}$/);
      const elf = readFileSync(built.path);
      expect(elf.readUInt32BE(0)).toBe(0x7f454c46);
      expect(elf[4]).toBe(2); // 64-bit
      expect(elf.readUInt16LE(18)).toBe(62); // EM_X86_64
      expect(Number(elf.readBigUInt64LE(24))).toBe(0x100000); // entry
      const loads = programHeaders(built.path).filter((ph) => ph.type === 1);
      expect(loads).toHaveLength(1);
      expect(loads[0]!.paddr).toBe(0x100000);
      expect(loads[0]!.vaddr).toBe(0x100000);
      expect(elf.includes(Buffer.from("SBX-GUEST-READY"))).toBe(true);

      const mtime = (await stat(built.path)).mtimeMs;
      const again = await buildTestGuest({ outDir: dir });
      expect(again).toEqual({ ...built, cached: true });
      expect((await stat(again.path)).mtimeMs).toBe(mtime);
      expect((await readdir(dir)).filter((name) => name.endsWith(".tmp"))).toEqual([]);
    },
  );

  it("reports a missing compiler as GUEST_BUILD_FAILED with the fix", async () => {
    const error = await buildTestGuest({ outDir: dir, compiler: "sbx-no-such-gcc" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FirecrackerLaunchError);
    expect((error as FirecrackerLaunchError).code).toBe("GUEST_BUILD_FAILED");
    expect((error as Error).message).toMatch(/not installed/);
    expect((await readdir(dir)).filter((name) => name.endsWith(".tmp"))).toEqual([]);
  });

  it("predicts the checksums the guest prints and parses its lines", () => {
    // Values printed by the guest under Firecracker v1.14.2 (first three iterations).
    expect(expectedGuestChecksums(3)).toEqual(["ae0435bd", "984a9731", "bb378e31"]);
    expect(parseTestGuestLine("SBX-GUEST iter=42 sum=0badf00d")).toEqual({
      iteration: 42,
      checksum: "0badf00d",
    });
    expect(parseTestGuestLine("SBX-GUEST-READY")).toBeUndefined();
    expect(parseTestGuestLine("SBX-GUEST iter=1 sum=xyz")).toBeUndefined();
  });
});
