// `pnpm --filter @sbx/uffd build:native`: builds the batch helper for every arch whose compiler is
// installed (gcc for x64, gcc-aarch64-linux-gnu for arm64); a missing compiler is reported, not fatal,
// because the server falls back to the pure-ffi path.
import { execFileSync } from "node:child_process";
import { buildNativeHelper, NATIVE_HELPER_TOOLCHAINS } from "../src/native-helper.ts";

for (const arch of ["amd64", "arm64"] as const) {
  const { compiler } = NATIVE_HELPER_TOOLCHAINS[arch];
  try {
    execFileSync(compiler, ["--version"], { stdio: "ignore" });
  } catch {
    console.log(`[uffd] native helper for ${arch} not built: ${compiler} is not installed`);
    continue;
  }
  console.log(`[uffd] native helper for ${arch}: ${await buildNativeHelper(arch)}`);
}
