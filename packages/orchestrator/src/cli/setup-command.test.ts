import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ProgressLine } from "../progress.ts";
import { childPids } from "../test-capabilities.ts";
import {
  compileElf,
  mirrorToolsMissing,
  publishKernel,
  publishRelease,
  type ReleaseMirror,
  releaseTarball,
  startReleaseMirror,
} from "../test-release-mirror.ts";
import { runCli } from "./cli.ts";

const run = promisify(execFile);
const VERSION = "v1.14.2";
const MAIN = join(import.meta.dirname, "main.ts");
// biome-ignore lint/suspicious/noControlCharactersInRegex: terminal control sequences are what is tested
const ESCAPE = /\u001b\[/;

function capture(isTTY = false) {
  const out = { stdout: "", stderr: "" };
  return {
    out,
    io: {
      stdout: { write: (text: string) => (out.stdout += text) },
      stderr: { write: (text: string) => (out.stderr += text), isTTY },
      env: {},
    },
  };
}

const missing =
  mirrorToolsMissing() ??
  (existsSync("/usr/bin/script") ? undefined : "script (util-linux) is not installed");

describe.skipIf(missing !== undefined)(`sbx setup${missing ? ` (skipped: ${missing})` : ""}`, () => {
  let root: string;
  let mirror: ReleaseMirror;
  let flags: (name: string) => string[];

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "sbx-setup-cli-"));
    mirror = await startReleaseMirror();
    publishRelease(
      mirror,
      VERSION,
      "amd64",
      await releaseTarball({ version: VERSION, arch: "amd64", padBytes: 4 * 1024 * 1024 }),
    );
    publishKernel(
      mirror,
      "v1.14",
      "amd64",
      "6.1.141",
      await readFile(await compileElf(root, "vmlinux", "amd64")),
    );
    flags = (name) => [
      "--arch",
      "amd64",
      "--firecracker-version",
      VERSION,
      "--kernel-version",
      "6.1",
      "--firecracker-dir",
      join(root, name, "firecracker"),
      "--kernel-dir",
      join(root, name, "kernels"),
      "--release-url",
      mirror.releaseBaseUrl,
      "--kernel-bucket-url",
      mirror.kernelBucketUrl,
    ];
  }, 120_000);

  afterAll(async () => {
    await mirror?.[Symbol.asyncDispose]();
    await rm(root, { recursive: true, force: true });
    expect(childPids()).toEqual([]);
  });

  it("--json: the result on stdout, progress as JSON lines on stderr, and no bar", async () => {
    const { out, io } = capture();
    expect(await runCli(["setup", "--json", ...flags("json")], io)).toBe(0);
    const result = JSON.parse(out.stdout) as { setup: { firecracker: { status: string; path: string } } };
    expect(result.setup.firecracker).toMatchObject({
      status: "installed",
      path: join(root, "json", "firecracker", VERSION, "amd64", "firecracker"),
    });
    expect(out.stderr).not.toMatch(ESCAPE);
    const lines = out.stderr
      .trimEnd()
      .split("\n")
      .map((line) => JSON.parse(line) as ProgressLine);
    const tarball = lines.filter((line) => line.task === `firecracker-${VERSION}-x86_64.tgz`);
    expect(tarball.at(-1)).toMatchObject({ type: "progress", phase: "download", done: true });
    expect(lines.every((line) => line.type === "progress" && typeof line.bytesPerSecond === "number")).toBe(
      true,
    );
  });

  it("on a pipe without --json: the summary only, no progress at all", async () => {
    const { out, io } = capture(false);
    expect(await runCli(["setup", ...flags("pipe")], io)).toBe(0);
    expect(out.stderr).toBe("");
    expect(out.stdout).toMatch(/^installed firecracker /m);
    expect(out.stdout).toMatch(/^installed kernel /m);
    expect(out.stdout).toContain("export FIRECRACKER_DIR=");
    const again = capture(false);
    expect(await runCli(["setup", ...flags("pipe")], again.io)).toBe(0);
    expect(again.out.stdout).toMatch(/^present {3}firecracker /m);
  });

  it("a failure is one typed error (JSON or text) and exit code 1; bad flags are usage errors", async () => {
    const json = capture();
    expect(
      await runCli(["setup", "--json", ...flags("fail"), "--firecracker-version", "v9.9.9"], json.io),
    ).toBe(1);
    expect(JSON.parse(json.out.stdout)).toMatchObject({ error: { code: "DOWNLOAD_NOT_FOUND" } });
    const text = capture();
    expect(await runCli(["setup", "--bogus"], text.io)).toBe(2);
    expect(text.out.stderr).toMatch(/^sbx setup: .*bogus/);
  });

  it("draws a progress bar on a real terminal (script(1) gives it a PTY), and JSON lines there only with --json", async () => {
    const command = (args: string[]) =>
      [process.execPath, "--conditions=@sbx/source", MAIN, "setup", ...args]
        .map((arg) => `'${arg}'`)
        .join(" ");
    const env = { ...process.env, COLUMNS: "160" };
    const bar = await run("script", ["-qec", command(flags("pty")), "/dev/null"], { env, timeout: 60_000 });
    expect(bar.stdout).toMatch(ESCAPE);
    expect(bar.stdout).toMatch(/download firecracker-v1\.14\.2-x86_64\.tgz +\[[=-]+\] +\d+%/);
    expect(bar.stdout).not.toContain('"type":"progress"');
    expect(bar.stdout).toMatch(/installed firecracker /);

    const json = await run("script", ["-qec", command(["--json", "--force", ...flags("pty")]), "/dev/null"], {
      env,
      timeout: 60_000,
    });
    expect(json.stdout).not.toMatch(/\[[=-]{20}\]/);
    const progress = json.stdout.split(/\r?\n/).filter((line) => line.startsWith('{"type":"progress"'));
    expect(progress.length).toBeGreaterThan(0);
    for (const line of progress) expect(JSON.parse(line)).toMatchObject({ type: "progress" });
  });
});
