import type { Options } from "tsup";

/** ESM + CJS + .d.ts with source maps, the same for every package. */
export function packageBuildConfig(entry: Record<string, string>): Options {
  return {
    entry,
    format: ["esm", "cjs"],
    dts: true,
    sourcemap: true,
    clean: true,
    target: "node22",
    platform: "node",
    splitting: false,
    treeshake: true,
  };
}
