import { execFileSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readElfLinkage } from "./elf.ts";
import { RootfsError } from "./errors.ts";

let dir: string;
let gcc = true;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "sbx-elf-test-"));
  await writeFile(join(dir, "main.c"), "int main(void) { return 0; }\n");
  try {
    for (const [name, flags] of [
      ["static", ["-static"]],
      ["static-pie", ["-static-pie"]],
      ["dynamic", []],
    ] as const) {
      execFileSync("gcc", [...flags, "-o", join(dir, name), join(dir, "main.c")], { stdio: "pipe" });
    }
  } catch {
    gcc = false;
    console.log("elf: gcc builds skipped (gcc or static libc missing; apt-get install gcc)");
  }
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("readElfLinkage", () => {
  it("Debian's busybox-static is static (no PT_INTERP, no PT_DYNAMIC)", async () => {
    expect(await readElfLinkage("/bin/busybox")).toEqual({
      static: true,
      hasDynamicSegment: false,
      neededLibraries: 0,
      staticPie: false,
    });
  });

  it("a dynamically linked binary has an interpreter and needed libraries", async () => {
    const linkage = await readElfLinkage("/bin/ls");
    expect(linkage.static).toBe(false);
    expect(linkage.interpreter).toBe("/lib64/ld-linux-x86-64.so.2");
    expect(linkage.neededLibraries).toBeGreaterThan(0);
  });

  it("tells -static, -static-pie and dynamic gcc output apart", async (ctx) => {
    if (!gcc) ctx.skip();
    expect(await readElfLinkage(join(dir, "static"))).toMatchObject({ static: true, staticPie: false });
    expect(await readElfLinkage(join(dir, "static-pie"))).toMatchObject({
      static: true,
      staticPie: true,
      hasDynamicSegment: true,
      neededLibraries: 0,
    });
    expect(await readElfLinkage(join(dir, "dynamic"))).toMatchObject({ static: false });
  });

  it("rejects a file that is not a 64-bit ELF", async () => {
    await writeFile(join(dir, "script"), "#!/bin/sh\necho hi\n");
    await expect(readElfLinkage(join(dir, "script"))).rejects.toBeInstanceOf(RootfsError);
  });
});
