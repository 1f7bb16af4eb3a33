// `pnpm test-data` (scripts/fetch-test-data.ts), run here against copies: the pinned files land in a
// directory whole or not at all, a file whose hash differs from the pin is refused by name, and a
// damaged copy is repaired. Needs the data once (`pnpm test-data`) to have a source to copy from.
import { execFile } from "node:child_process";
import { appendFileSync, cpSync, existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { FIRECRACKER_TEST_DATA_DIR, manifestDigest, STAMP_FILE } from "../../../scripts/test-data.ts";
import { FIRECRACKER_TEST_FILES } from "../../../scripts/test-data-manifest.ts";
import { sharedSkipReason, sharedSkipSuffix } from "./test-spec-files.ts";

const run = promisify(execFile);
const script = resolve(import.meta.dirname, "../../../scripts/fetch-test-data.ts");

/** Runs the script offline from `from` into `dest`; resolves with its exit code and stderr. */
async function fetchTestData(from: string, dest: string): Promise<{ code: number; stderr: string }> {
  try {
    const { stderr } = await run(process.execPath, [script, "--offline", "--from", from, "--dest", dest]);
    return { code: 0, stderr };
  } catch (error) {
    const failed = error as { code?: number; stderr?: string };
    return { code: failed.code ?? -1, stderr: failed.stderr ?? "" };
  }
}

function filesUnder(dir: string, prefix = ""): string[] {
  return readdirSync(join(dir, prefix), { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? filesUnder(dir, join(prefix, entry.name)) : [join(prefix, entry.name)],
  );
}

describe.skipIf(sharedSkipReason !== undefined)(`pnpm test-data${sharedSkipSuffix}`, () => {
  it("copies every pinned file and the stamp, then finds them up to date", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sbx-test-data-"));
    try {
      const dest = join(dir, "out");
      const first = await fetchTestData(FIRECRACKER_TEST_DATA_DIR, dest);
      expect(first).toMatchObject({ code: 0 });
      expect(filesUnder(dest).sort()).toEqual(
        [...FIRECRACKER_TEST_FILES.map((f) => f.path), STAMP_FILE].sort(),
      );
      expect(readFileSync(join(dest, STAMP_FILE), "utf8").trim()).toBe(manifestDigest());
      const again = await fetchTestData(FIRECRACKER_TEST_DATA_DIR, dest);
      expect(again.code).toBe(0);
      expect(again.stderr).toMatch(/up to date/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("refuses a source file whose sha256 is not the pinned one, naming it, and writes nothing", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sbx-test-data-"));
    try {
      const source = join(dir, "shared");
      cpSync(FIRECRACKER_TEST_DATA_DIR, source, { recursive: true });
      appendFileSync(join(source, "docs", "vsock.md"), "tampered\n");
      rmSync(join(source, "cpu-templates", "schema.json"));
      const dest = join(dir, "out");
      const result = await fetchTestData(source, dest);
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/could not get 2 of \d+ files/);
      expect(result.stderr).toContain("docs/vsock.md: not in");
      expect(result.stderr).toContain("cpu-templates/schema.json: not in");
      expect(existsSync(dest)).toBe(false);
      expect(readdirSync(dir).sort()).toEqual(["shared"]); // no staging directory left behind
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("repairs a damaged copy and a stale stamp", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sbx-test-data-"));
    try {
      const dest = join(dir, "out");
      expect((await fetchTestData(FIRECRACKER_TEST_DATA_DIR, dest)).code).toBe(0);
      appendFileSync(join(dest, "api", "firecracker-v1.16.1.yaml"), "# damaged\n");
      const repaired = await fetchTestData(FIRECRACKER_TEST_DATA_DIR, dest);
      expect(repaired.code).toBe(0);
      expect(readFileSync(join(dest, "api", "firecracker-v1.16.1.yaml"))).toEqual(
        readFileSync(join(FIRECRACKER_TEST_DATA_DIR, "api", "firecracker-v1.16.1.yaml")),
      );
      appendFileSync(join(dest, STAMP_FILE), "stale\n");
      expect((await fetchTestData(FIRECRACKER_TEST_DATA_DIR, dest)).stderr).not.toMatch(/up to date/);
      expect(readFileSync(join(dest, STAMP_FILE), "utf8").trim()).toBe(manifestDigest());
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
