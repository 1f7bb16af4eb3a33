import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, rename, rm, stat } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { detectBinaryArch, hostArch } from "@sbx/arch";
import { z } from "zod";
import { FirecrackerLaunchError } from "../errors.ts";

/** The line the test guest prints once it runs. */
export const TEST_GUEST_READY_MARKER = "SBX-GUEST-READY";
/** Matches a progress line: `SBX-GUEST iter=<n> sum=<8 hex digits>`. */
export const TEST_GUEST_PROGRESS_PATTERN: RegExp = /^SBX-GUEST iter=(\d+) sum=([0-9a-f]{8})$/;

/** Guest-physical range the guest rewrites, one 32-bit word per 4 KiB page: [16 MiB, 64 MiB). */
export const TEST_GUEST_REGION = Object.freeze({
  start: 16 * 1024 * 1024,
  end: 64 * 1024 * 1024,
  pageSize: 4096,
});
/** The guest needs at least this much memory (its region ends at 64 MiB). */
export const TEST_GUEST_MIN_MEM_MIB = 64;

const SOURCE_NAME = "sbx-test-guest.c";
const LINKER_SCRIPT_NAME = "sbx-test-guest.ld";

/** gcc flags, kept portable: no -march=native, so the image is the same on every x86_64 host. */
export const TEST_GUEST_CFLAGS: readonly string[] = Object.freeze([
  "-O2",
  "-ffreestanding",
  "-nostdlib",
  "-static",
  "-fno-pic",
  "-no-pie",
  "-fno-stack-protector",
  "-fno-asynchronous-unwind-tables",
  "-fcf-protection=none",
  "-mgeneral-regs-only",
  "-mno-red-zone",
  "-Wall",
  "-Wextra",
  "-Werror",
  "-Wl,--build-id=none",
  "-Wl,--no-warn-rwx-segments",
]);

/** One progress line of the tiny test guest: its iteration and running checksum. */
export interface TestGuestProgress {
  iteration: number;
  /** The running checksum, 8 lowercase hex digits. */
  checksum: string;
}

/** How `buildTestGuest` compiles the tiny test guest: output directory and compiler. */
export interface BuildTestGuestOptions {
  /** Directory the ELF is written to (created if missing); builds are cached there by source hash. */
  outDir: string;
  /** The C compiler; default `gcc` on x86_64 hosts, `x86_64-linux-gnu-gcc` elsewhere. */
  compiler?: string;
  signal?: AbortSignal;
}

/** The compiled tiny test guest: its ELF (a `kernel_image_path`) and the source hash it is cached by. */
export interface BuiltTestGuest {
  /** The guest ELF, a Firecracker `kernel_image_path`. */
  path: string;
  /** sha256 over sources, flags and compiler name: the cache key, part of the file name. */
  sourceHash: string;
  /** True when an earlier build with the same hash was reused. */
  cached: boolean;
}

function moduleDir(): string {
  // ESM and the .ts sources have import.meta.url; in the CJS bundle it is undefined and __dirname is set.
  const url: string | undefined = import.meta.url;
  return typeof url === "string" ? dirname(fileURLToPath(url)) : __dirname;
}

/**
 * The directory holding the guest's C source and linker script. They ship in the package
 * (`src/testing/guest/`), next to this module in the sources and at `../src/testing/guest` from `dist/`.
 */
export function testGuestSourceDir(): string {
  const here = moduleDir();
  const candidates = [
    join(here, "guest"),
    resolve(here, "../src/testing/guest"),
    resolve(here, "../../src/testing/guest"),
  ];
  for (const candidate of candidates) {
    if (existsSync(join(candidate, SOURCE_NAME))) return candidate;
  }
  throw new FirecrackerLaunchError(
    "GUEST_BUILD_FAILED",
    `cannot find the test guest sources (${SOURCE_NAME}); looked in ${candidates.join(", ")}. Reinstall @sbx/fc-client: its "files" must include src/testing/guest`,
    { details: { candidates } },
  );
}

function run(
  command: string,
  args: string[],
  signal?: AbortSignal,
): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolvePromise, reject) => {
    execFile(command, args, { signal, maxBuffer: 4 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(Object.assign(error, { stdout, stderr }));
      else resolvePromise({ stdout, stderr });
    });
  });
}

/**
 * Compiles the tiny freestanding x86_64 test guest with gcc (one PT_LOAD segment at 1 MiB, 64-bit
 * entry as Firecracker enters an ELF vmlinux). It boots under Firecracker in tens of milliseconds even
 * where /dev/kvm is PVM, prints {@link TEST_GUEST_READY_MARKER}, then checksum lines whose values
 * {@link expectedGuestChecksums} predicts. Cached by a hash of sources, flags and compiler name.
 */
export async function buildTestGuest(options: BuildTestGuestOptions): Promise<BuiltTestGuest> {
  const sourceDir = testGuestSourceDir();
  const compiler = options.compiler ?? (hostArch() === "amd64" ? "gcc" : "x86_64-linux-gnu-gcc");
  const source = await readFile(join(sourceDir, SOURCE_NAME));
  const linkerScript = await readFile(join(sourceDir, LINKER_SCRIPT_NAME));
  const hash = createHash("sha256");
  for (const part of [source, linkerScript, TEST_GUEST_CFLAGS.join("\0"), compiler]) {
    hash.update(part);
    hash.update("\0");
  }
  const sourceHash = hash.digest("hex");
  await mkdir(options.outDir, { recursive: true });
  const path = join(resolve(options.outDir), `sbx-test-guest-${sourceHash.slice(0, 16)}.elf`);
  const existing = await stat(path).catch(() => undefined);
  if (existing?.isFile() && existing.size > 0) return { path, sourceHash, cached: true };

  const temp = `${path}.${process.pid}.${Date.now()}.tmp`;
  try {
    await run(
      compiler,
      [
        ...TEST_GUEST_CFLAGS,
        `-Wl,-T,${join(sourceDir, LINKER_SCRIPT_NAME)}`,
        "-o",
        temp,
        join(sourceDir, SOURCE_NAME),
      ],
      options.signal,
    );
    const detected = await detectBinaryArch(temp);
    if (detected.arch !== "amd64" || detected.format !== "elf") {
      throw new Error(`the compiler produced a ${detected.arch} ${detected.format}, not an x86_64 ELF`);
    }
    await rename(temp, path);
  } catch (cause) {
    await rm(temp, { force: true });
    const err = cause as Error & { stderr?: string; code?: unknown };
    const hint =
      err.code === "ENOENT"
        ? `${compiler} is not installed; install gcc (Debian: apt-get install gcc${compiler === "gcc" ? "" : "-x86-64-linux-gnu"})`
        : (err.stderr ?? err.message).trim();
    throw new FirecrackerLaunchError(
      "GUEST_BUILD_FAILED",
      `building the test guest with ${compiler} failed: ${hint}`,
      {
        cause,
        details: { compiler, sourceDir },
      },
    );
  }
  return { path, sourceHash, cached: false };
}

/** Parses one console line of the guest; undefined for any other line. */
export function parseTestGuestLine(line: string): TestGuestProgress | undefined {
  const match = TEST_GUEST_PROGRESS_PATTERN.exec(line.trim());
  if (!match) return undefined;
  return { iteration: Number(match[1]), checksum: match[2]! };
}

/**
 * Computes the checksum the guest prints after each iteration 1..`upTo`, by running the same
 * arithmetic over a zero-filled copy of its memory region. A restored guest whose memory came back
 * byte-exact prints exactly these values.
 */
export function expectedGuestChecksums(upTo: number): string[] {
  const pages = (TEST_GUEST_REGION.end - TEST_GUEST_REGION.start) / TEST_GUEST_REGION.pageSize;
  const words = new Uint32Array(pages);
  const out: string[] = [];
  let checksum = 0x811c9dc5;
  for (let iteration = 1; iteration <= upTo; iteration++) {
    for (let page = 0; page < pages; page++) {
      const next = (Math.imul(words[page]!, 1664525) + ((1013904223 ^ page ^ iteration) >>> 0)) >>> 0;
      words[page] = next;
      let c = Math.imul((checksum ^ next) >>> 0, 0x9e3779b1) >>> 0;
      c = (c ^ (c >>> 15)) >>> 0;
      checksum = c;
    }
    out.push(checksum.toString(16).padStart(8, "0"));
  }
  return out;
}

/**
 * The guest's balloon scratch must end inside the first GiB, the part Firecracker identity-maps for it;
 * it starts right above the walked region.
 */
const BALLOON_SCRATCH_LIMIT_MIB = 1024;

const balloonOptionsSchema = z
  .object({
    scratchMib: z.number().int().min(1),
    regionShiftMib: z.number().int().min(0).default(0),
  })
  .refine(
    (o) =>
      TEST_GUEST_REGION.end / (1024 * 1024) + o.regionShiftMib + o.scratchMib <= BALLOON_SCRATCH_LIMIT_MIB,
    { message: `region shift plus scratch must end by ${BALLOON_SCRATCH_LIMIT_MIB} MiB of guest memory` },
  );

/** The tiny test guest's balloon scratch region: its size and where it sits. */
export interface TestGuestBalloonOptions {
  /** Size of the scratch region the guest dirties, then reports free, in MiB. */
  scratchMib: number;
  /** The `sbx.region-shift-mib` the guest boots with, if any: the scratch sits above the shifted region. */
  regionShiftMib?: number;
}

/**
 * Where the guest's balloon scratch lies, and the memory the guest needs for it (MiB, for
 * `mem_size_mib`). INVALID_OPTIONS when it does not fit below 1 GiB.
 */
export function testGuestBalloonScratch(options: TestGuestBalloonOptions): {
  start: number;
  end: number;
  minMemMib: number;
} {
  const parsed = balloonOptionsSchema.safeParse(options);
  if (!parsed.success)
    throw new FirecrackerLaunchError(
      "INVALID_OPTIONS",
      `test guest balloon scratch: ${z.prettifyError(parsed.error)}`,
      { details: { options } },
    );
  const MiB = 1024 * 1024;
  const start = TEST_GUEST_REGION.end + parsed.data.regionShiftMib * MiB;
  const end = start + parsed.data.scratchMib * MiB;
  return { start, end, minMemMib: end / MiB };
}

/**
 * The boot argument that makes the guest drive Firecracker's balloon (free page reporting must be on):
 * it dirties `scratchMib` MiB while the balloon's target is 0 and reports them free once it is above 0.
 */
export function testGuestBalloonBootArg(options: TestGuestBalloonOptions): string {
  testGuestBalloonScratch(options);
  return `sbx.balloon-scratch-mib=${options.scratchMib}`;
}

/** What the guest's balloon driver printed. */
export type TestGuestBalloonEvent =
  | { kind: "ready"; features: bigint; reportingQueue: number; scratchStart: number; scratchBytes: number }
  | { kind: "touched"; bytes: number; round: number }
  | { kind: "reported"; bytes: number }
  | { kind: "error"; reason: string };

/**
 * Any balloon line of the guest. Not anchored: Firecracker's serial console now and then loses a newline
 * between two lines (seen with v1.14.2), so lines are scanned, not matched whole.
 */
export const TEST_GUEST_BALLOON_PATTERN: RegExp =
  /SBX-GUEST balloon (?:ready features=([0-9a-f]{16}) reporting-queue=(\d+) scratch=([0-9a-f]{16})\+(\d+)|touched bytes=(\d+) round=(\d+)|reported bytes=(\d+)|error=([a-z-]+))/g;

/** Every balloon line in the guest's console output, in the order printed. */
export function parseTestGuestBalloon(lines: readonly string[]): TestGuestBalloonEvent[] {
  return [...lines.join("\n").matchAll(TEST_GUEST_BALLOON_PATTERN)].map((m): TestGuestBalloonEvent => {
    if (m[1] !== undefined)
      return {
        kind: "ready",
        features: BigInt(`0x${m[1]}`),
        reportingQueue: Number(m[2]),
        scratchStart: Number.parseInt(m[3]!, 16),
        scratchBytes: Number(m[4]),
      };
    if (m[5] !== undefined) return { kind: "touched", bytes: Number(m[5]), round: Number(m[6]) };
    if (m[7] !== undefined) return { kind: "reported", bytes: Number(m[7]) };
    return { kind: "error", reason: m[8]! };
  });
}
