import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { FakeFirecrackerBehavior } from "./fake-firecracker.ts";

export type { FakeFirecrackerBehavior } from "./fake-firecracker.ts";

function moduleDir(): string {
  // ESM and the .ts sources have import.meta.url; in the CJS bundle it is undefined and __dirname is set.
  const url: string | undefined = import.meta.url;
  return typeof url === "string" ? dirname(fileURLToPath(url)) : __dirname;
}

/** Where the fake executable's script is: the .ts beside this module, or the built .js in dist. */
export function fakeFirecrackerScript(): string {
  const here = moduleDir();
  for (const name of [
    "fake-firecracker.ts",
    "fake-firecracker.js",
    "fake-firecracker.cjs",
    "testing/fake-firecracker.js",
  ]) {
    const candidate = join(here, name);
    if (existsSync(candidate)) return candidate;
  }
  throw new Error(`the fake firecracker script is missing next to ${here}; rebuild @sbx/fc-client`);
}

/**
 * The `binary` and `binaryArgs` that make `launchFirecracker` start the fake Firecracker: Node (a
 * real ELF of the host arch, so the launcher's arch check runs) with the fake script and its behaviour.
 */
export function fakeFirecrackerCommand(behavior: FakeFirecrackerBehavior = {}): {
  binary: string;
  binaryArgs: string[];
} {
  return {
    binary: process.execPath,
    binaryArgs: ["--no-warnings", fakeFirecrackerScript(), `--fake=${JSON.stringify(behavior)}`],
  };
}
