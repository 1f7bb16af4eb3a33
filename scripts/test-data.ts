// Where the tests find Firecracker's files, and why they skip when those are not there. Imported by
// test helpers of fc-client, cpu-template and orchestrator; `pnpm test-data` fills the directory.
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { FIRECRACKER_TEST_FILES } from "./test-data-manifest.ts";

export const REPO_ROOT = resolve(import.meta.dirname, "..");
export const FIRECRACKER_TEST_DATA_DIR = join(REPO_ROOT, ".test-data", "firecracker");
/** Written last by `pnpm test-data`: the manifest's digest, so data from an older manifest counts as missing. */
export const STAMP_FILE = ".complete";

export function manifestDigest(): string {
  return createHash("sha256").update(JSON.stringify(FIRECRACKER_TEST_FILES)).digest("hex");
}

function stampIsCurrent(dir: string): boolean {
  const stamp = join(dir, STAMP_FILE);
  return existsSync(stamp) && readFileSync(stamp, "utf8").trim() === manifestDigest();
}

/** Undefined when every pinned file is in place; otherwise a skip reason that names the command. */
export function firecrackerTestDataSkipReason(dir = FIRECRACKER_TEST_DATA_DIR): string | undefined {
  return stampIsCurrent(dir)
    ? undefined
    : `Firecracker's test files are missing or stale in ${dir}: run \`pnpm test-data\` (scripts/test.sh runs it)`;
}

/** A pinned file's path under the test-data directory; throws for a path the manifest does not pin. */
export function firecrackerTestFile(path: string): string {
  if (!FIRECRACKER_TEST_FILES.some((file) => file.path === path || file.path.startsWith(`${path}/`)))
    throw new Error(`${path} is not in scripts/test-data-manifest.ts: pin it there before a test reads it`);
  return join(FIRECRACKER_TEST_DATA_DIR, path);
}

/** For a skipped test's name, so the skip list at the end of a run says why: "" when the data is there. */
export function firecrackerTestDataSkipSuffix(dir = FIRECRACKER_TEST_DATA_DIR): string {
  return firecrackerTestDataSkipReason(dir) === undefined
    ? ""
    : " (skipped: Firecracker's test files missing: run `pnpm test-data`)";
}
