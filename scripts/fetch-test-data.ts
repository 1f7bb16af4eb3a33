// `pnpm test-data`: puts every file of scripts/test-data-manifest.ts into .test-data/firecracker, each
// checked against its pinned sha256. Copies from ../shared/firecracker when it is beside the
// repository (or from `--from DIR`), downloads from GitHub at the pinned tag otherwise. Idempotent:
// when the data is in place and every hash matches it does nothing. The directory is replaced in
// one rename, so an interrupted run leaves either the old data or none, never half of it.
//   node scripts/fetch-test-data.ts [--from DIR] [--offline] [--dest DIR]
import { createHash } from "node:crypto";
import {
  chmodSync,
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeSync,
} from "node:fs";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import {
  FIRECRACKER_TEST_DATA_DIR,
  firecrackerTestDataSkipReason,
  manifestDigest,
  REPO_ROOT,
  STAMP_FILE,
} from "./test-data.ts";
import { FIRECRACKER_REPOSITORY, FIRECRACKER_TEST_FILES, type TestDataFile } from "./test-data-manifest.ts";

/** No pinned file is near this; a larger answer is not the file we pinned, so stop reading it. */
const MAX_FILE_BYTES = 4 * 1024 * 1024;
const DOWNLOAD_TIMEOUT_MS = 60_000;

const { values } = parseArgs({
  options: {
    from: { type: "string" },
    offline: { type: "boolean", default: false },
    // Another destination than the tests' own (the script's tests use one of their own).
    dest: { type: "string" },
  },
});
const destination = resolve(values.dest ?? FIRECRACKER_TEST_DATA_DIR);
const sharedDir = resolve(values.from ?? join(REPO_ROOT, "..", "shared", "firecracker"));
const say = (message: string) => process.stderr.write(`[test-data] ${message}\n`);
const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

function readIfPinned(path: string, file: TestDataFile): Uint8Array | undefined {
  if (!existsSync(path)) return undefined;
  const bytes = readFileSync(path);
  return sha256(bytes) === file.sha256 ? bytes : undefined;
}

function inPlace(): boolean {
  if (firecrackerTestDataSkipReason(destination) !== undefined) return false;
  return FIRECRACKER_TEST_FILES.every((file) => readIfPinned(join(destination, file.path), file));
}

async function download(file: TestDataFile): Promise<Uint8Array> {
  const url = `https://raw.githubusercontent.com/${FIRECRACKER_REPOSITORY}/${file.tag}/${file.upstream}`;
  const response = await fetch(url, { signal: AbortSignal.timeout(DOWNLOAD_TIMEOUT_MS), redirect: "follow" });
  if (!response.ok || !response.body) throw new Error(`${url}: HTTP ${response.status}`);
  const chunks: Uint8Array[] = [];
  let length = 0;
  for await (const chunk of response.body) {
    length += chunk.byteLength;
    if (length > MAX_FILE_BYTES) throw new Error(`${url}: larger than ${MAX_FILE_BYTES} bytes`);
    chunks.push(chunk);
  }
  const bytes = Buffer.concat(chunks);
  const actual = sha256(bytes);
  if (actual !== file.sha256) throw new Error(`${url}: sha256 ${actual}, pinned ${file.sha256}`);
  return bytes;
}

function writeDurably(path: string, bytes: Uint8Array): void {
  mkdirSync(dirname(path), { recursive: true });
  const fd = openSync(path, "w");
  try {
    writeSync(fd, bytes);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function fsyncDirectory(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

async function main(): Promise<number> {
  if (inPlace()) {
    say(`up to date in ${destination}`);
    return 0;
  }
  const parent = dirname(destination);
  mkdirSync(parent, { recursive: true });
  const staging = mkdtempSync(join(parent, ".firecracker-"));
  chmodSync(staging, 0o755);
  try {
    const failures: string[] = [];
    let copied = 0;
    let downloaded = 0;
    let unreachable: string | undefined;
    for (const file of FIRECRACKER_TEST_FILES) {
      let bytes = readIfPinned(join(sharedDir, file.path), file);
      if (bytes) copied++;
      else if (values.offline) failures.push(`${file.path}: not in ${sharedDir} with sha256 ${file.sha256}`);
      else if (unreachable) failures.push(`${file.path}: not tried, GitHub unreachable ${unreachable}`);
      else {
        try {
          bytes = await download(file);
          downloaded++;
        } catch (error) {
          failures.push(`${file.path}: ${(error as Error).message}${causeOf(error)}`);
          // A failed connection fails the same way for the other 56 files: one wait, not 57.
          if ((error as Error).message === "fetch failed") unreachable = causeOf(error).trim();
        }
      }
      if (bytes) writeDurably(join(staging, file.path), bytes);
    }
    if (failures.length > 0) {
      say(
        `could not get ${failures.length} of ${FIRECRACKER_TEST_FILES.length} files; tests that read them will skip:`,
      );
      for (const failure of failures) say(`  ${failure}`);
      return 1;
    }
    writeDurably(join(staging, STAMP_FILE), Buffer.from(`${manifestDigest()}\n`));
    fsyncDirectory(staging);
    const old = `${destination}.old-${process.pid}`;
    if (existsSync(destination)) renameSync(destination, old);
    renameSync(staging, destination);
    fsyncDirectory(parent);
    rmSync(old, { recursive: true, force: true });
    say(
      `${FIRECRACKER_TEST_FILES.length} files in ${destination} (${copied} from ${sharedDir}, ${downloaded} downloaded)`,
    );
    return 0;
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}

function causeOf(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  return cause ? ` (${cause.code ?? cause.message})` : "";
}

process.exitCode = await main();
