import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A real aarch64 ELF from Debian (libc6-arm64-cross), or null when the package is missing. */
export const DEBIAN_ARM64_LIBC = "/usr/aarch64-linux-gnu/lib/libc.so.6";

export function realArm64Elf(): string | null {
  return existsSync(DEBIAN_ARM64_LIBC) ? DEBIAN_ARM64_LIBC : null;
}

/** Compiles a static aarch64 executable with the cross compiler, or returns null without one. */
export function compileArm64Executable(dir: string): string | null {
  const source = join(dir, "hello.c");
  const output = join(dir, "hello-arm64");
  writeFileSync(source, "int main(void) { return 0; }\n");
  try {
    execFileSync("aarch64-linux-gnu-gcc", ["-static", "-O2", "-o", output, source], { stdio: "ignore" });
    return output;
  } catch {
    return null;
  }
}

/** A header-only x86 bzImage: the boot sector signature and "HdrS" at 0x202, as the boot protocol says. */
export function writeBzImageHeader(path: string): void {
  const header = Buffer.alloc(0x400);
  header.writeUInt16LE(0xaa55, 0x1fe);
  header.write("HdrS", 0x202, "latin1");
  header.writeUInt16LE(0x020f, 0x206);
  writeFileSync(path, header);
}

/** A header-only arm64 Image: "MZ" for the EFI stub and the "ARM\x64" magic at offset 56. */
export function writeArm64ImageHeader(path: string): void {
  const header = Buffer.alloc(0x400);
  header.write("MZ", 0, "latin1");
  header.writeBigUInt64LE(0x200000n, 16);
  header.write("ARM\x64", 56, "latin1");
  header.writeUInt32LE(0x40, 60);
  writeFileSync(path, header);
}

export function withTempDir<T>(run: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), "sbx-arch-test-"));
  return run(dir).finally(() => rmSync(dir, { recursive: true, force: true }));
}
