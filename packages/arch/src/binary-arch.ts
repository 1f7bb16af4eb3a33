import { open } from "node:fs/promises";
import type { Arch } from "./arch.ts";
import { ArchError } from "./errors.ts";
import { archTraits } from "./traits.ts";

/** The binary formats `detectBinaryArch` recognizes: ELF, x86 bzImage, arm64 Image. */
export type BinaryFormat = "elf" | "bzimage" | "arm64-image";

/** A binary's format and the arch it is for. */
export interface BinaryArch {
  format: BinaryFormat;
  arch: Arch;
}

// Offsets from the ELF spec, Documentation/arch/x86/boot.rst and Documentation/arch/arm64/booting.rst.
const ELF_MAGIC = 0x7f454c46;
const ELF_MACHINE_OFFSET = 18;
const BZIMAGE_MAGIC_OFFSET = 0x202;
const BZIMAGE_MAGIC = "HdrS";
const ARM64_IMAGE_MAGIC_OFFSET = 56;
const ARM64_IMAGE_MAGIC = "ARM\x64";
const HEADER_BYTES = 0x210;

const ELF_MACHINES: Readonly<Record<number, Arch>> = { 62: "amd64", 183: "arm64" };
const ELF_MACHINE_NAMES: Readonly<Record<number, string>> = {
  3: "i386",
  8: "mips",
  20: "powerpc",
  21: "ppc64",
  22: "s390",
  40: "arm (32-bit)",
  62: "x86_64",
  183: "aarch64",
  243: "riscv",
};

async function readHeader(path: string): Promise<Buffer> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(path, "r");
  } catch (cause) {
    throw new ArchError("ARTIFACT_UNREADABLE", `cannot open ${path}: ${(cause as Error).message}`, {
      cause,
      details: { path },
    });
  }
  try {
    const buffer = Buffer.alloc(HEADER_BYTES);
    const { bytesRead } = await handle.read(buffer, 0, HEADER_BYTES, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/** Identifies a binary's architecture from its header alone: ELF, x86 bzImage or arm64 `Image`. */
export async function detectBinaryArch(path: string): Promise<BinaryArch> {
  const header = await readHeader(path);
  if (header.length >= 20 && header.readUInt32BE(0) === ELF_MAGIC) {
    const littleEndian = header[5] === 1;
    const machine = littleEndian
      ? header.readUInt16LE(ELF_MACHINE_OFFSET)
      : header.readUInt16BE(ELF_MACHINE_OFFSET);
    const arch = ELF_MACHINES[machine];
    if (!arch || header[4] !== 2) {
      const name = ELF_MACHINE_NAMES[machine] ?? `e_machine ${machine}`;
      throw new ArchError(
        "UNSUPPORTED_BINARY_ARCH",
        `${path} is a ${header[4] === 1 ? "32-bit" : "64-bit"} ELF for ${name}; sbx runs x86_64 and aarch64 binaries only`,
        { details: { path, machine } },
      );
    }
    return { format: "elf", arch };
  }
  if (header.toString("latin1", BZIMAGE_MAGIC_OFFSET, BZIMAGE_MAGIC_OFFSET + 4) === BZIMAGE_MAGIC) {
    return { format: "bzimage", arch: "amd64" };
  }
  if (
    header.toString("latin1", ARM64_IMAGE_MAGIC_OFFSET, ARM64_IMAGE_MAGIC_OFFSET + 4) === ARM64_IMAGE_MAGIC
  ) {
    return { format: "arm64-image", arch: "arm64" };
  }
  throw new ArchError(
    "UNKNOWN_BINARY_FORMAT",
    `${path} is neither an ELF binary, an x86 bzImage nor an arm64 Linux Image (read ${header.length} header bytes)`,
    { details: { path } },
  );
}

/**
 * Checks that a kernel is one Firecracker can boot on `arch`: an uncompressed ELF vmlinux on x86_64,
 * a PE-formatted `Image` on aarch64.
 */
export async function checkKernelImage(path: string, arch: Arch): Promise<BinaryArch> {
  let detected: BinaryArch;
  try {
    detected = await detectBinaryArch(path);
  } catch (cause) {
    if (cause instanceof ArchError && cause.code === "ARTIFACT_UNREADABLE") throw cause;
    throw new ArchError(
      "KERNEL_FORMAT_UNSUPPORTED",
      `${path} is not a kernel Firecracker can boot on ${arch}: ${(cause as Error).message}`,
      { cause, details: { path, arch } },
    );
  }
  const wanted = archTraits(arch).kernelImageFormat;
  if (detected.arch === arch && detected.format === wanted) return detected;
  const fix =
    arch === "amd64"
      ? "use the uncompressed vmlinux (ELF) from the kernel build, or extract it from a bzImage with the kernel's scripts/extract-vmlinux"
      : "use arch/arm64/boot/Image (the PE-formatted Image) from the kernel build, not vmlinux or Image.gz";
  throw new ArchError(
    "KERNEL_FORMAT_UNSUPPORTED",
    `${path} is a ${detected.arch} ${detected.format} kernel, but Firecracker on ${arch} boots a ${wanted === "elf" ? "x86_64 ELF vmlinux" : "aarch64 Image"}; ${fix}`,
    { details: { path, arch, detected } },
  );
}
