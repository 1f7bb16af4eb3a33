// Building the guest agent (native/agent/*.c) from source: static, for a baseline CPU of each arch,
// into {agentBinaryDir()}/{AGENT_VERSION}/{arch}/sbx-agent with a sha256sum sidecar — the layout
// @sbx/arch's resolveArtifact reads, so @sbx/rootfs installs it the way it installs busybox.

import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { Arch } from "@sbx/arch";
import { AgentError } from "./errors.ts";

const run = promisify(execFile);

/** Must equal AGENT_VERSION in native/agent/agent.h (a test checks `sbx-agent --version`). */
export const AGENT_VERSION = "0.1.0";
/** The agent binary's file name, in the build cache and at `/.sbx/agent` in a root filesystem. */
export const AGENT_BINARY_NAME = "sbx-agent";

/**
 * Static (the guest may have no libc, or another one) and baseline CPUs only: an agent built with
 * -march=native would SIGILL on an older host of the fleet after a snapshot moved there.
 */
export const AGENT_TOOLCHAINS: Readonly<Record<Arch, { compiler: string; flags: readonly string[] }>> = {
  amd64: {
    compiler: "gcc",
    flags: ["-O2", "-static", "-march=x86-64", "-mtune=generic", "-Wall", "-Wextra"],
  },
  arm64: {
    compiler: "aarch64-linux-gnu-gcc",
    flags: ["-O2", "-static", "-march=armv8-a", "-Wall", "-Wextra"],
  },
};

/** A built agent binary: its path, arch, version and sha256. */
export interface AgentBinary {
  path: string;
  sha256: string;
  version: string;
  arch: Arch;
}

function packageRoot(): string {
  // ESM and the .ts sources have import.meta.url; in the CJS bundle it is undefined and __dirname is set.
  const url: string | undefined = import.meta.url;
  const here = typeof url === "string" ? dirname(fileURLToPath(url)) : __dirname;
  return resolve(here, "..");
}

/** Where built agents go: `{dir}/{version}/{arch}/sbx-agent` (+ `.sha256`). Pass it to rootfs as the agent dir. */
export function agentBinaryDir(): string {
  return join(packageRoot(), "native", "dist");
}

/** The C sources the agent is built from (their digest names the cached build). */
export async function agentSourceFiles(): Promise<string[]> {
  const dir = join(packageRoot(), "native", "agent");
  return (await readdir(dir))
    .filter((name) => name.endsWith(".c") || name.endsWith(".h"))
    .sort()
    .map((name) => join(dir, name));
}

async function sourceDigest(arch: Arch): Promise<string> {
  const hash = createHash("sha256");
  hash.update(JSON.stringify(AGENT_TOOLCHAINS[arch]));
  for (const file of await agentSourceFiles()) hash.update(file).update(await readFile(file));
  return hash.digest("hex");
}

/** Compiles the agent for `arch`. Needs that arch's compiler (gcc, gcc-aarch64-linux-gnu) and its static libc. */
export async function buildAgent(arch: Arch, outputDir = agentBinaryDir()): Promise<AgentBinary> {
  const { compiler, flags } = AGENT_TOOLCHAINS[arch];
  if (flags.some((flag) => flag.includes("native")))
    throw new AgentError("BUILD_FAILED", "the agent is built for a baseline CPU only");
  const dir = join(outputDir, AGENT_VERSION, arch);
  await mkdir(dir, { recursive: true });
  const output = join(dir, AGENT_BINARY_NAME);
  const temp = `${output}.${process.pid}.tmp`;
  const sources = (await agentSourceFiles()).filter((file) => file.endsWith(".c"));
  try {
    await run(compiler, [...flags, "-o", temp, ...sources], { maxBuffer: 16 << 20 });
  } catch (cause) {
    await rm(temp, { force: true });
    const stderr = (cause as { stderr?: string }).stderr ?? String(cause);
    throw new AgentError(
      "BUILD_FAILED",
      `building the ${arch} agent with ${compiler} failed: ${stderr.slice(0, 4000)}`,
      { cause },
    );
  }
  const sha256 = createHash("sha256")
    .update(await readFile(temp))
    .digest("hex");
  await writeAtomically(`${output}.sha256`, `${sha256}  ${AGENT_BINARY_NAME}\n`);
  await writeAtomically(`${output}.source-sha256`, `${await sourceDigest(arch)}\n`);
  await rename(temp, output);
  return { path: output, sha256, version: AGENT_VERSION, arch };
}

/** The built agent for `arch`, building it first when it is missing or its sources changed. */
export async function ensureAgentBinary(arch: Arch, outputDir = agentBinaryDir()): Promise<AgentBinary> {
  const output = join(outputDir, AGENT_VERSION, arch, AGENT_BINARY_NAME);
  try {
    const [stamp, sidecar, bytes] = await Promise.all([
      readFile(`${output}.source-sha256`, "utf8"),
      readFile(`${output}.sha256`, "utf8"),
      readFile(output),
    ]);
    const sha256 = createHash("sha256").update(bytes).digest("hex");
    if (stamp.trim() === (await sourceDigest(arch)) && sidecar.startsWith(sha256)) {
      return { path: output, sha256, version: AGENT_VERSION, arch };
    }
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code !== "ENOENT") throw cause;
  }
  return await buildAgent(arch, outputDir);
}

async function writeAtomically(path: string, content: string): Promise<void> {
  const temp = `${path}.${process.pid}.tmp`;
  await writeFile(temp, content, { flush: true });
  await rename(temp, path);
}
