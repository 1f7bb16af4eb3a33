import { randomBytes } from "node:crypto";
import { lstat, open, opendir, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { type Logger, silentLogger } from "@sbx/arch";
import { z } from "zod";
import { RootfsError } from "./errors.ts";
import { type CommandResult, runCommand } from "./exec.ts";

const BLOCK = 4096;
const MiB = 1024 * 1024;
const FSCK_TIMEOUT_MS = 15 * 60_000;

/** e2fsck's exit status is a bit mask (e2fsck(8)): 0 clean, 1 errors corrected, 2 corrected and the system should reboot, 4 errors left uncorrected, 8 operational error, 16 usage or syntax error, 32 cancelled, 128 shared-library error. */
export const E2FSCK_EXIT = {
  OK: 0,
  CORRECTED: 1,
  CORRECTED_REBOOT: 2,
  UNCORRECTED: 4,
  OPERATIONAL_ERROR: 8,
  USAGE_ERROR: 16,
  CANCELLED: 32,
  LIBRARY_ERROR: 128,
} as const;

/** True for 0–2: the file system is clean or e2fsck repaired it. */
export function e2fsckSucceeded(code: number | null): boolean {
  return code !== null && code >= 0 && code <= 2;
}

/** Where `buildExt4Image` is (scan, mkfs, check, done) and how much it has seen. */
export interface Ext4Progress {
  phase: "scan" | "mkfs" | "check" | "done";
  /** Bytes of file content seen so far (scan) or in total (later phases). */
  bytes: number;
  /** Directory entries (files, dirs, links, devices) seen so far or in total. */
  entries: number;
}

/** What a directory tree needs in an ext4 image: data bytes, content bytes, inodes. */
export interface ContentEstimate {
  /** Data bytes rounded up to whole 4 KiB blocks (hard-linked files counted once). */
  dataBytes: number;
  /** Sum of file sizes (hard-linked files counted once). */
  contentBytes: number;
  /** Inodes the content needs (each hard-linked file once). */
  inodes: number;
  /** Directory entries walked (hard links counted each time). */
  entries: number;
}

export const buildExt4ImageOptionsSchema = z.object({
  sourceDir: z.string().min(1),
  output: z.string().min(1),
  /** "auto": content plus headroom; or an exact size in bytes (a multiple of 4096). */
  size: z.union([z.literal("auto"), z.number().int().positive().multipleOf(BLOCK)]).default("auto"),
  /** Volume label, at most 16 bytes. */
  label: z
    .string()
    .max(16)
    .regex(/^[A-Za-z0-9._-]*$/, "letters, digits, '.', '_' and '-' only")
    .default("rootfs"),
  /** Free space added on top of the content for "auto": a fraction of it plus a fixed amount. */
  headroom: z
    .object({
      fraction: z.number().min(0).max(10).default(0.25),
      bytes: z
        .number()
        .int()
        .min(0)
        .default(64 * MiB),
    })
    .prefault({}),
  /** Extra inodes on top of the counted ones for "auto" (files the guest creates later). */
  extraInodes: z.number().int().min(0).default(16_384),
  /** Passed to mkfs.ext4 -O, e.g. "^metadata_csum" for very old guest kernels. */
  features: z
    .string()
    .regex(/^[\w^,]+$/)
    .optional(),
  /** Reserved-for-root percentage (mkfs.ext4 -m). A guest rootfs usually wants 0. */
  reservedPercent: z.number().min(0).max(50).default(0),
});
/** What `buildExt4Image` writes: source tree, output path, size (or auto with headroom), label, inodes, features, progress, AbortSignal. */
export type BuildExt4ImageOptions = z.input<typeof buildExt4ImageOptionsSchema> & {
  onProgress?: (progress: Ext4Progress) => void;
  logger?: Logger;
  signal?: AbortSignal;
};

/** One e2fsck run of a check or repair: its command, exit code and output. */
export interface Ext4CheckStep {
  command: string;
  args: string[];
  code: number | null;
  output: string;
}

/** The ext4 image written: path, size, inodes, the estimate it was sized from, and the checks it passed. */
export interface BuildExt4ImageResult {
  path: string;
  sizeBytes: number;
  inodes: number;
  estimate: ContentEstimate;
  /** Every e2fsck run, in order: the preen, the force-fix fallback when it ran, the final -fn. */
  checks: Ext4CheckStep[];
  /** True when preen could not repair and `e2fsck -fy` ran. */
  forcedRepair: boolean;
}

/**
 * Walks `dir` without following symlinks and adds up what an ext4 image of it needs. Hard links
 * (same device and inode) count once.
 */
export async function estimateContent(
  dir: string,
  onEntry?: (bytes: number, entries: number) => void,
): Promise<ContentEstimate> {
  const seen = new Set<string>();
  const estimate: ContentEstimate = { dataBytes: 0, contentBytes: 0, inodes: 1, entries: 0 };
  const roundUp = (n: number) => Math.ceil(n / BLOCK) * BLOCK;
  const root = await lstat(dir);
  if (!root.isDirectory()) {
    throw new RootfsError("INVALID_OPTIONS", `${dir} is not a directory`, { details: { dir } });
  }
  estimate.dataBytes += BLOCK;
  const stack = [dir];
  while (stack.length > 0) {
    const current = stack.pop() as string;
    const handle = await opendir(current);
    let names = 0;
    for await (const entry of handle) {
      names++;
      const path = join(current, entry.name);
      const st = await lstat(path, { bigint: false });
      estimate.entries++;
      if (st.nlink > 1 && !st.isDirectory()) {
        const key = `${st.dev}:${st.ino}`;
        if (seen.has(key)) continue;
        seen.add(key);
      }
      estimate.inodes++;
      if (st.isDirectory()) {
        estimate.dataBytes += BLOCK;
        stack.push(path);
      } else if (st.isFile()) {
        estimate.contentBytes += st.size;
        // Extent trees and indirect blocks: one extra block per 128 MiB is generous.
        estimate.dataBytes += roundUp(st.size) + Math.ceil(st.size / (128 * MiB)) * BLOCK;
      } else if (st.isSymbolicLink() && st.size >= 60) {
        estimate.dataBytes += BLOCK;
      }
      onEntry?.(estimate.contentBytes, estimate.entries);
    }
    // Large directories need more than one block: ~ 32 bytes per entry is generous for short names.
    estimate.dataBytes += roundUp(names * 32);
  }
  return estimate;
}

/** The image size for "auto": content, inode tables, journal and group metadata, plus headroom. */
export function autoImageSize(
  estimate: ContentEstimate,
  inodes: number,
  headroom: { fraction: number; bytes: number },
): number {
  const inodeTables = inodes * 256;
  const base = estimate.dataBytes + inodeTables;
  // mke2fs journal: 16 MiB below 1 GiB, 64 MiB up to 16 GiB, 128 MiB above; bitmaps and group descriptors ~ 1%.
  const journal = base < 1024 * MiB ? 16 * MiB : base < 16 * 1024 * MiB ? 64 * MiB : 128 * MiB;
  const metadata = Math.ceil(base * 0.02) + 4 * MiB;
  const total = base + journal + metadata + base * headroom.fraction + headroom.bytes;
  return Math.ceil(total / MiB) * MiB;
}

/**
 * Writes `sourceDir` into a new ext4 image at `output` with `mkfs.ext4 -d`: sized from the
 * content (or exactly `size`), written under a temp name beside `output`, checked with
 * `e2fsck -pf` (falling back to `e2fsck -fy` when preen cannot repair), required to pass a final
 * `e2fsck -fn`, and only then renamed to `output`. On any failure the temp file is removed.
 */
export async function buildExt4Image(input: BuildExt4ImageOptions): Promise<BuildExt4ImageResult> {
  const parsed = buildExt4ImageOptionsSchema.safeParse(input);
  if (!parsed.success) {
    throw new RootfsError("INVALID_OPTIONS", `buildExt4Image: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
    });
  }
  const options = parsed.data;
  const source = await lstat(options.sourceDir).catch(() => undefined);
  if (!source?.isDirectory())
    throw new RootfsError(
      "INVALID_OPTIONS",
      `buildExt4Image: the source ${options.sourceDir} is ${source ? "not a directory" : "missing"}`,
      { details: { sourceDir: options.sourceDir } },
    );
  const logger = input.logger ?? silentLogger;
  const report = input.onProgress ?? (() => {});
  let lastReport = 0;
  const estimate = await estimateContent(options.sourceDir, (bytes, entries) => {
    const now = Date.now();
    if (now - lastReport >= 100) {
      lastReport = now;
      report({ phase: "scan", bytes, entries });
    }
  });
  report({ phase: "scan", bytes: estimate.contentBytes, entries: estimate.entries });
  const inodes = estimate.inodes + options.extraInodes + Math.ceil(estimate.inodes * 0.1);
  const sizeBytes =
    options.size === "auto" ? autoImageSize(estimate, inodes, options.headroom) : options.size;
  const temp = join(
    dirname(options.output),
    `.${basename(options.output)}.tmp-${randomBytes(6).toString("hex")}`,
  );
  const signal = input.signal;
  try {
    const handle = await open(temp, "wx", 0o644);
    try {
      await handle.truncate(sizeBytes);
    } finally {
      await handle.close();
    }
    report({ phase: "mkfs", bytes: estimate.contentBytes, entries: estimate.entries });
    const args = [
      "-q",
      "-F",
      "-t",
      "ext4",
      "-b",
      String(BLOCK),
      "-I",
      "256",
      "-N",
      String(inodes),
      "-m",
      String(options.reservedPercent),
      "-L",
      options.label,
      ...(options.features ? ["-O", options.features] : []),
      "-d",
      options.sourceDir,
      temp,
    ];
    const mkfs = await runCommand(["mkfs.ext4", ...args], {
      check: false,
      timeoutMs: 60 * 60_000,
      ...(signal ? { signal } : {}),
    });
    if (mkfs.code !== 0) {
      const stderr = mkfs.stderr.trim() || mkfs.stdout.trim();
      const full = /No space left|Could not allocate block|Could not allocate inode/i.test(stderr);
      throw new RootfsError(
        "EXT4_BUILD_FAILED",
        `mkfs.ext4 -d ${options.sourceDir} failed (exit ${mkfs.code ?? mkfs.signal}): ${stderr}${
          full ? `; the ${sizeBytes}-byte image is too small: pass a larger size or size: "auto"` : ""
        }`,
        { details: { args, code: mkfs.code, stderr: mkfs.stderr, sizeBytes, inodes } },
      );
    }
    report({ phase: "check", bytes: estimate.contentBytes, entries: estimate.entries });
    const repair = await checkAndRepair(temp, logger, signal);
    const handleSync = await open(temp, "r+");
    try {
      await handleSync.sync();
    } finally {
      await handleSync.close();
    }
    await rename(temp, options.output);
    await syncDir(dirname(options.output));
    report({ phase: "done", bytes: estimate.contentBytes, entries: estimate.entries });
    logger.info?.({ path: options.output, sizeBytes, inodes }, "ext4 image written");
    return { path: options.output, sizeBytes, inodes, estimate, ...repair };
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

/** The e2fsck runs a repair took, and whether it had to force `-fy` after preen failed. */
export interface RepairExt4Result {
  checks: Ext4CheckStep[];
  forcedRepair: boolean;
}

/**
 * Repairs an unmounted ext4 image in place: `e2fsck -pf` (preen); when preen exits 4 or more,
 * `e2fsck -fy` (force-fix, run a second time if the first pass left errors); then `e2fsck -fn`
 * must report a clean file system. Use it on a template's image after the provisioning boot
 * (whose script deletes itself, which can leave orphan inodes) and before the boot that is
 * snapshotted.
 */
export async function repairExt4(
  path: string,
  options: { logger?: Logger; signal?: AbortSignal } = {},
): Promise<RepairExt4Result> {
  const st = await lstat(path).catch((cause: unknown) => {
    throw new RootfsError("INVALID_OPTIONS", `cannot repair ${path}: ${(cause as Error).message}`, {
      cause,
      details: { path },
    });
  });
  if (!st.isFile() && !st.isBlockDevice()) {
    throw new RootfsError("INVALID_OPTIONS", `${path} is not an image file or block device`, {
      details: { path },
    });
  }
  return checkAndRepair(path, options.logger ?? silentLogger, options.signal);
}

async function e2fsck(path: string, flags: string, signal: AbortSignal | undefined): Promise<Ext4CheckStep> {
  const args = [flags, path];
  const result: CommandResult = await runCommand(["e2fsck", ...args], {
    check: false,
    timeoutMs: FSCK_TIMEOUT_MS,
    ...(signal ? { signal } : {}),
  });
  return { command: "e2fsck", args, code: result.code, output: `${result.stdout}${result.stderr}`.trim() };
}

async function checkAndRepair(
  path: string,
  logger: Logger,
  signal: AbortSignal | undefined,
): Promise<RepairExt4Result> {
  const checks: Ext4CheckStep[] = [];
  const preen = await e2fsck(path, "-pf", signal);
  checks.push(preen);
  let forcedRepair = false;
  if (!e2fsckSucceeded(preen.code)) {
    if (preen.code !== null && preen.code & (E2FSCK_EXIT.OPERATIONAL_ERROR | E2FSCK_EXIT.USAGE_ERROR)) {
      throw new RootfsError(
        "EXT4_CHECK_FAILED",
        `e2fsck -pf ${path} could not run (exit ${preen.code}): ${preen.output}; is the image mounted or unreadable?`,
        { details: { path, checks } },
      );
    }
    logger.warn?.(
      { path, code: preen.code, output: preen.output },
      "e2fsck preen could not repair; running e2fsck -fy",
    );
    forcedRepair = true;
    let forced = await e2fsck(path, "-fy", signal);
    checks.push(forced);
    if (!e2fsckSucceeded(forced.code)) {
      forced = await e2fsck(path, "-fy", signal);
      checks.push(forced);
    }
    if (!e2fsckSucceeded(forced.code)) {
      throw new RootfsError(
        "EXT4_REPAIR_FAILED",
        `e2fsck -fy ${path} left errors uncorrected (exit ${forced.code}): ${forced.output}`,
        { details: { path, checks } },
      );
    }
  }
  const final = await e2fsck(path, "-fn", signal);
  checks.push(final);
  if (final.code !== 0) {
    throw new RootfsError(
      forcedRepair ? "EXT4_REPAIR_FAILED" : "EXT4_CHECK_FAILED",
      `e2fsck -fn ${path} is not clean after ${forcedRepair ? "force-fix" : "preen"} (exit ${final.code}): ${final.output}`,
      { details: { path, checks } },
    );
  }
  return { checks, forcedRepair };
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
