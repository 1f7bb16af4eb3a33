import { copyFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { hostArch } from "./arch.ts";
import { checkKernelImage, detectBinaryArch } from "./binary-arch.ts";
import {
  compileArm64Executable,
  realArm64Elf,
  withTempDir,
  writeArm64ImageHeader,
  writeBzImageHeader,
} from "./test-fixtures.ts";

const arm64Elf = realArm64Elf();
if (!arm64Elf) console.log("skipped: no real arm64 ELF (apt-get install libc6-arm64-cross)");

describe("detectBinaryArch on real binaries", () => {
  it("identifies this host's own executables", async () => {
    expect(await detectBinaryArch(process.execPath)).toEqual({ format: "elf", arch: hostArch() });
    expect(await detectBinaryArch("/bin/sh")).toEqual({ format: "elf", arch: hostArch() });
  });

  it.skipIf(!arm64Elf)("identifies Debian's aarch64 libc (libc6-arm64-cross)", async () => {
    expect(await detectBinaryArch(arm64Elf!)).toEqual({ format: "elf", arch: "arm64" });
  });

  it("identifies a static aarch64 executable built by the cross compiler", async (context) => {
    await withTempDir(async (dir) => {
      const binary = compileArm64Executable(dir);
      if (!binary) {
        console.log("skipped: aarch64-linux-gnu-gcc is not installed");
        context.skip();
      }
      expect(await detectBinaryArch(binary!)).toEqual({ format: "elf", arch: "arm64" });
    });
  });
});

describe("detectBinaryArch on kernel headers and other files", () => {
  it("identifies an x86 bzImage and an arm64 Image by their magic", async () => {
    await withTempDir(async (dir) => {
      writeBzImageHeader(join(dir, "bzImage"));
      writeArm64ImageHeader(join(dir, "Image"));
      expect(await detectBinaryArch(join(dir, "bzImage"))).toEqual({ format: "bzimage", arch: "amd64" });
      expect(await detectBinaryArch(join(dir, "Image"))).toEqual({ format: "arm64-image", arch: "arm64" });
    });
  });

  it("rejects text, empty files and ELF files of other machines", async () => {
    await withTempDir(async (dir) => {
      writeFileSync(join(dir, "script"), "#!/bin/sh\necho hi\n");
      writeFileSync(join(dir, "empty"), "");
      const riscv = Buffer.alloc(64);
      riscv.writeUInt32BE(0x7f454c46, 0);
      riscv[4] = 2;
      riscv[5] = 1;
      riscv.writeUInt16LE(243, 18);
      writeFileSync(join(dir, "riscv"), riscv);
      await expect(detectBinaryArch(join(dir, "script"))).rejects.toMatchObject({
        code: "UNKNOWN_BINARY_FORMAT",
      });
      await expect(detectBinaryArch(join(dir, "empty"))).rejects.toMatchObject({
        code: "UNKNOWN_BINARY_FORMAT",
      });
      await expect(detectBinaryArch(join(dir, "riscv"))).rejects.toMatchObject({
        code: "UNSUPPORTED_BINARY_ARCH",
        message: expect.stringContaining("riscv"),
      });
    });
  });

  it("reports a missing file as unreadable", async () => {
    await expect(detectBinaryArch("/nonexistent/sbx/kernel")).rejects.toMatchObject({
      code: "ARTIFACT_UNREADABLE",
    });
  });
});

describe("checkKernelImage", () => {
  it("accepts an ELF kernel on amd64 and an Image on arm64", async () => {
    await withTempDir(async (dir) => {
      writeArm64ImageHeader(join(dir, "Image"));
      expect(await checkKernelImage(join(dir, "Image"), "arm64")).toEqual({
        format: "arm64-image",
        arch: "arm64",
      });
    });
    if (hostArch() === "amd64") {
      expect(await checkKernelImage(process.execPath, "amd64")).toEqual({ format: "elf", arch: "amd64" });
    }
  });

  it("refuses a bzImage on amd64 and says how to get a vmlinux", async () => {
    await withTempDir(async (dir) => {
      writeBzImageHeader(join(dir, "bzImage"));
      await expect(checkKernelImage(join(dir, "bzImage"), "amd64")).rejects.toMatchObject({
        code: "KERNEL_FORMAT_UNSUPPORTED",
        message: expect.stringContaining("vmlinux"),
      });
    });
  });

  it("refuses a wrong-arch kernel and an arm64 ELF vmlinux", async () => {
    await withTempDir(async (dir) => {
      writeArm64ImageHeader(join(dir, "Image"));
      await expect(checkKernelImage(join(dir, "Image"), "amd64")).rejects.toMatchObject({
        code: "KERNEL_FORMAT_UNSUPPORTED",
      });
      copyFileSync(process.execPath, join(dir, "vmlinux"));
      await expect(checkKernelImage(join(dir, "vmlinux"), "arm64")).rejects.toMatchObject({
        code: "KERNEL_FORMAT_UNSUPPORTED",
        message: expect.stringContaining("arch/arm64/boot/Image"),
      });
    });
  });

  it("refuses something that is no kernel at all", async () => {
    await withTempDir(async (dir) => {
      writeFileSync(join(dir, "kernel"), "not a kernel");
      await expect(checkKernelImage(join(dir, "kernel"), "amd64")).rejects.toMatchObject({
        code: "KERNEL_FORMAT_UNSUPPORTED",
      });
    });
  });
});
