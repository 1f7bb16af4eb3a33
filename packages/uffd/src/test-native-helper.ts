import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostArch } from "@sbx/arch";
import { NATIVE_HELPER_TOOLCHAINS, nativeHelperSource } from "./native-helper.ts";

/**
 * The native batch helper built from this checkout's source into a temp file, so tests never run a
 * stale bundled one; undefined (with the reason printed) where the host's compiler cannot build it.
 * `remove()` deletes the file.
 */
export function buildTestNativeHelper(): { path: string | undefined; remove(): void } {
  const output = join(
    tmpdir(),
    `sbx-uffd-native-test-${process.pid}-${Math.random().toString(36).slice(2)}.so`,
  );
  const { compiler, flags } = NATIVE_HELPER_TOOLCHAINS[hostArch()];
  try {
    execFileSync(compiler, [...flags, "-o", output, nativeHelperSource()], { stdio: "pipe" });
  } catch (error) {
    console.log(
      `[uffd] native-helper tests skipped: ${compiler} could not build it (${String(error).slice(0, 200)})`,
    );
    return { path: undefined, remove() {} };
  }
  return { path: output, remove: () => rmSync(output, { force: true }) };
}

/** The fault loops a test should cover: pure ffi always, the native helper when it could be built. */
export function faultLoops(
  helper: string | undefined,
): { codePath: "pure-ffi" | "native"; helper: string }[] {
  return [
    { codePath: "pure-ffi", helper: "off" },
    ...(helper ? [{ codePath: "native" as const, helper }] : []),
  ];
}
