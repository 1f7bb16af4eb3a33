// Finding, building and loading the optional native batch helper (native/uffd-batch.c). The package
// ships it prebuilt for linux x64 and arm64; without it the server uses the pure-ffi path, which always
// works and is always tested.
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, renameSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { Arch } from "@sbx/arch";

const run = promisify(execFile);

export const NATIVE_HELPER_NAME = "libsbx-uffd.so";
/** `sbx_uffd_abi_version()` of the helper this code expects (native/uffd-batch.c). */
export const NATIVE_HELPER_ABI = 7;

/** Baseline CPUs only: a helper built with -march=native would SIGILL on an older host of the fleet. */
export const NATIVE_HELPER_TOOLCHAINS: Readonly<
  Record<Arch, { compiler: string; flags: readonly string[] }>
> = {
  amd64: { compiler: "gcc", flags: ["-O2", "-shared", "-fPIC", "-march=x86-64", "-mtune=generic"] },
  arm64: { compiler: "aarch64-linux-gnu-gcc", flags: ["-O2", "-shared", "-fPIC", "-march=armv8-a"] },
};
const NODE_ARCH: Record<Arch, string> = { amd64: "x64", arm64: "arm64" };

function packageRoot(): string {
  // ESM and the .ts sources have import.meta.url; in the CJS bundle it is undefined and __dirname is set.
  const url: string | undefined = import.meta.url;
  const here = typeof url === "string" ? dirname(fileURLToPath(url)) : __dirname;
  return resolve(here, "..");
}

export function nativeHelperSource(): string {
  return join(packageRoot(), "native", "uffd-batch.c");
}

/** Where the package keeps the helper for `arch`: native/linux-<x64|arm64>/libsbx-uffd.so. */
export function bundledNativeHelperPath(arch: Arch): string {
  return join(packageRoot(), "native", `linux-${NODE_ARCH[arch]}`, NATIVE_HELPER_NAME);
}

/**
 * The helper to use: an explicit path, `SBX_UFFD_NATIVE_HELPER`, or the bundled one for this arch;
 * undefined (pure-ffi path) when there is none or when `off` is asked for.
 */
export function resolveNativeHelper(
  choice: "auto" | "off" | string,
  arch: Arch,
  env = process.env,
): string | undefined {
  if (choice === "off") return undefined;
  if (choice !== "auto") return choice;
  const fromEnv = env.SBX_UFFD_NATIVE_HELPER;
  if (fromEnv === "off") return undefined;
  if (fromEnv) return fromEnv;
  const bundled = bundledNativeHelperPath(arch);
  return existsSync(bundled) ? bundled : undefined;
}

/** Compiles the helper for `arch` into `output` (default: the bundled path). Needs the arch's compiler. */
export async function buildNativeHelper(arch: Arch, output = bundledNativeHelperPath(arch)): Promise<string> {
  const { compiler, flags } = NATIVE_HELPER_TOOLCHAINS[arch];
  if (flags.some((flag) => flag.includes("native")))
    throw new Error("native helpers are built for a baseline CPU only");
  mkdirSync(dirname(output), { recursive: true });
  const temp = `${output}.${process.pid}.tmp`;
  await run(compiler, [...flags, "-o", temp, nativeHelperSource()]);
  renameSync(temp, output);
  return output;
}
