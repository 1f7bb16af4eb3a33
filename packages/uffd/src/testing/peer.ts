// Builds and runs the test peer (peer/peer.c): a process that does Firecracker's side of the UFFD
// handshake and then plays the guest, checking every byte it reads against the memory file.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { collectOutput } from "@sbx/arch/testing";
import { UffdError } from "../errors.ts";

const run = promisify(execFile);

/** A C source shipped in the package: next to this module in src/, and at ../src/testing from dist/. */
function testingSource(...path: string[]): string {
  // ESM and the .ts sources have import.meta.url; in the CJS bundle it is undefined and __dirname is set.
  const url: string | undefined = import.meta.url;
  const here = typeof url === "string" ? dirname(fileURLToPath(url)) : __dirname;
  const candidates = [join(here, ...path), resolve(here, "../src/testing", ...path)];
  return candidates.find((candidate) => existsSync(candidate)) ?? (candidates[0] as string);
}

/** The peer's C source. */
export const testPeerSource = testingSource("peer", "peer.c");
/** How the test peer is compiled: baseline x86-64, so it runs on any host of the arch. */
export const TEST_PEER_CFLAGS = ["-O2", "-Wall", "-pthread", "-march=x86-64"] as const;
/** The C page-fault handler benchmarks measure against: the floor a handler in C reaches. */
export const cHandlerSource = testingSource("c-handler.c");
const C_HANDLER_CFLAGS = ["-O2", "-march=x86-64"] as const;

/** Compiles `source` with gcc into `outDir`, cached by a hash of source, flags and compiler. */
async function buildCached(
  source: string,
  flags: readonly string[],
  name: string,
  outDir: string,
): Promise<string> {
  const text = readFileSync(source);
  const compiler = (await run("gcc", ["--version"]).catch(() => ({ stdout: "" }))).stdout;
  if (!compiler)
    throw new UffdError("INVALID_OPTIONS", `gcc is needed to build the ${name} (apt install gcc)`);
  const hash = createHash("sha256").update(text).update(flags.join(" ")).update(compiler).digest("hex");
  const binary = join(outDir, `${name}-${hash.slice(0, 16)}`);
  if (existsSync(binary)) return binary;
  mkdirSync(outDir, { recursive: true });
  const temp = `${binary}.${process.pid}.tmp`;
  await run("gcc", [...flags, "-o", temp, source]);
  renameSync(temp, binary);
  return binary;
}

/** Compiles the peer with gcc into `outDir` (cached by a hash of source, flags and compiler). */
export function buildTestPeer(options: { outDir?: string } = {}): Promise<string> {
  return buildCached(
    testPeerSource,
    TEST_PEER_CFLAGS,
    "uffd-peer",
    options.outDir ?? join(tmpdir(), "sbx-uffd-peer-cache"),
  );
}

/** Compiles the C handler (cHandlerSource) into `outDir`, cached like the peer. */
export function buildCHandler(options: { outDir?: string } = {}): Promise<string> {
  return buildCached(
    cHandlerSource,
    C_HANDLER_CFLAGS,
    "uffd-c-handler",
    options.outDir ?? join(tmpdir(), "sbx-uffd-peer-cache"),
  );
}

/** How the test peer plays Firecracker: its memory, its handshake and how it touches pages. */
export interface TestPeerOptions {
  binary: string;
  socketPath: string;
  memoryFile: string;
  /** Bytes of guest memory (a multiple of the page size). */
  size: number;
  fileOffset?: number;
  pageSize?: 4096 | 2097152;
  backing?: "anon" | "memfd" | "hugetlb";
  /** `none`: handshake only, then hold the connection for `holdMs`. */
  mode?: "seq" | "random" | "write" | "none";
  threads?: number;
  /** 2 sends the memfd too (with `backing: "memfd"`). */
  fds?: 0 | 1 | 2;
  /** Adds a pipe fd to the message (a third, wrong fd). */
  extraFd?: boolean;
  /** Sends this body instead of the real mappings. */
  body?: string;
  /** madvise(MADV_DONTNEED) this byte range after the pass, then expect zeros there. */
  remove?: { offset: number; length: number };
  holdMs?: number;
  /** After the pass, write 0xEE to byte 0 of these pages (indexes in the region). */
  writePages?: number[];
  /**
   * Each thread touches a page, removes it (MADV_DONTNEED) and checks it reads back as zeros, this many
   * times: a fault right behind its REMOVE, from many threads at once. Counted in zeroChecked.
   */
  removeRace?: number;
  /** Remove this many single pages (every other page of the last 2N) before the pass, which then
   * touches only the pages below them: REMOVE events by the thousand, as a hostile balloon sends. */
  preRemove?: number;
  /** With preRemove: read the removed pages back after the pass and check they are zeros. */
  checkRemoved?: boolean;
}

/** What the test peer reports: pages touched and every byte it found wrong. */
export interface TestPeerResult {
  ok: boolean;
  touched: number;
  mismatches?: number;
  zeroChecked?: number;
  zeroMismatches?: number;
  written?: number;
  elapsedNs?: number;
}

/** The test peer's command line for these options. */
export function testPeerArgs(o: TestPeerOptions): string[] {
  const args = ["--socket", o.socketPath, "--file", o.memoryFile, "--size", String(o.size)];
  if (o.fileOffset) args.push("--file-offset", String(o.fileOffset));
  if (o.pageSize) args.push("--page", String(o.pageSize));
  if (o.backing) args.push("--backing", o.backing);
  if (o.mode) args.push("--mode", o.mode);
  if (o.threads) args.push("--threads", String(o.threads));
  if (o.fds !== undefined) args.push("--fds", String(o.fds));
  if (o.extraFd) args.push("--extra-fd");
  if (o.body !== undefined) args.push("--body", o.body);
  if (o.remove) args.push("--remove", `${o.remove.offset}:${o.remove.length}`);
  if (o.holdMs) args.push("--hold-ms", String(o.holdMs));
  if (o.writePages?.length) args.push("--write-pages", o.writePages.join(","));
  if (o.removeRace) args.push("--remove-race", String(o.removeRace));
  if (o.preRemove) args.push("--pre-remove", String(o.preRemove));
  if (o.checkRemoved) args.push("--check-removed");
  return args;
}

/** Starts the peer; the caller owns the process. */
export function spawnTestPeer(options: TestPeerOptions): ChildProcess {
  return spawn(options.binary, testPeerArgs(options), { stdio: ["ignore", "pipe", "pipe"] });
}

/** Runs the peer to completion; rejects with its stderr when it fails. */
export async function runTestPeer(
  options: TestPeerOptions & { timeoutMs?: number },
): Promise<TestPeerResult> {
  const child = spawnTestPeer(options);
  const output = collectOutput(child);
  const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 60_000);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
    child.once("close", (c, s) => resolve([c, s])),
  );
  clearTimeout(timer);
  if (code !== 0)
    throw new Error(`test peer failed (exit ${code}, signal ${signal}): ${output.stderr().trim()}`);
  return JSON.parse(output.stdout().trim()) as TestPeerResult;
}

/** Writes a memory file whose every page differs (a deterministic xorshift stream). */
export function writeTestMemoryFile(path: string, size: number, seed = 0x9e3779b9): void {
  const words = new Uint32Array(size / 4);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  writeFileSync(path, new Uint8Array(words.buffer));
}
