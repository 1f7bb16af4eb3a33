import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { detectBinaryArch } from "@sbx/arch";
import { describe, expect, it } from "vitest";
import {
  buildNativeHelper,
  bundledNativeHelperPath,
  NATIVE_HELPER_TOOLCHAINS,
  resolveNativeHelper,
} from "./native-helper.ts";
import { PageFaultServer } from "./server.ts";
import { buildTestNativeHelper } from "./test-native-helper.ts";

const hasCompiler = (compiler: string) => {
  try {
    execFileSync(compiler, ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
};

describe("the native batch helper", () => {
  it("is built for a baseline CPU on both arches, never -march=native", () => {
    expect(NATIVE_HELPER_TOOLCHAINS.amd64.flags).toContain("-march=x86-64");
    expect(NATIVE_HELPER_TOOLCHAINS.arm64.flags).toContain("-march=armv8-a");
    for (const { flags } of Object.values(NATIVE_HELPER_TOOLCHAINS))
      expect(flags.filter((f) => f.includes("native"))).toEqual([]);
  });

  it("is chosen explicitly, by SBX_UFFD_NATIVE_HELPER, or from the package; `off` means pure ffi", () => {
    expect(resolveNativeHelper("off", "amd64")).toBeUndefined();
    expect(resolveNativeHelper("/opt/x.so", "amd64")).toBe("/opt/x.so");
    expect(resolveNativeHelper("auto", "amd64", { SBX_UFFD_NATIVE_HELPER: "/y.so" })).toBe("/y.so");
    expect(resolveNativeHelper("auto", "amd64", { SBX_UFFD_NATIVE_HELPER: "off" })).toBeUndefined();
    expect(bundledNativeHelperPath("arm64")).toMatch(/native\/linux-arm64\/libsbx-uffd\.so$/);
  });

  it.skipIf(!hasCompiler("gcc"))(
    "is checked when the server is made: each path is its own library, and another ABI is refused",
    () => {
      const dir = mkdtempSync(join(tmpdir(), "sbx-uffd-helper-"));
      const good = buildTestNativeHelper();
      try {
        const source = join(dir, "stale.c");
        writeFileSync(source, "int sbx_uffd_abi_version(void) { return 1; }\n");
        const stale = join(dir, "stale.so");
        execFileSync("gcc", ["-shared", "-fPIC", "-o", stale, source]);
        const server = (nativeHelper: string) =>
          new PageFaultServer({ socketPath: join(dir, "uffd.sock"), memoryFile: source, nativeHelper });
        expect(server(good.path as string).codePath).toBe("native");
        // Opened after a good helper: a shared library name would have kept calling the good one.
        expect(() => server(stale)).toThrow(
          expect.objectContaining({ code: "INVALID_OPTIONS", message: expect.stringMatching(/ABI 1\b/) }),
        );
        expect(server(good.path as string).codePath).toBe("native");
        expect(server("off").codePath).toBe("pure-ffi");
      } finally {
        good.remove();
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  for (const arch of ["amd64", "arm64"] as const) {
    const { compiler } = NATIVE_HELPER_TOOLCHAINS[arch];
    const skip = hasCompiler(compiler) ? undefined : `${compiler} not installed`;
    if (skip) console.log(`[uffd] ${arch} helper build test skipped: ${skip}`);
    it.skipIf(skip !== undefined)(`builds a shared object of the ${arch} machine type`, async () => {
      const dir = mkdtempSync(join(tmpdir(), "sbx-uffd-helper-"));
      try {
        const built = await buildNativeHelper(arch, join(dir, "libsbx-uffd.so"));
        expect(await detectBinaryArch(built)).toMatchObject({ format: "elf", arch });
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }

  const npm = hasCompiler("npm") && hasCompiler("gcc") ? undefined : "npm or gcc not installed";
  it.skipIf(npm !== undefined)(
    "ships in the npm tarball with its source, next to the test peer's source",
    () => {
      const root = join(import.meta.dirname, "..");
      execFileSync(process.execPath, ["--conditions=@sbx/source", "native/build.ts"], {
        cwd: root,
        stdio: "ignore",
      });
      const [pack] = JSON.parse(
        execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], {
          cwd: root,
          encoding: "utf8",
        }),
      ) as [{ files: { path: string }[] }];
      const files = pack.files.map((f) => f.path);
      expect(files).toContain("native/uffd-batch.c");
      expect(files).toContain("native/linux-x64/libsbx-uffd.so");
      if (hasCompiler(NATIVE_HELPER_TOOLCHAINS.arm64.compiler))
        expect(files).toContain("native/linux-arm64/libsbx-uffd.so");
      expect(files).toContain("src/testing/peer/peer.c");
      expect(files.filter((f) => f.endsWith(".test.ts"))).toEqual([]);
    },
  );
});
