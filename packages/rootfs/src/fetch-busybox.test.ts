import { execFile, execFileSync } from "node:child_process";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { Arch } from "@sbx/arch";
import { beforeAll, describe, expect, it } from "vitest";
import { resolveBusybox } from "./busybox.ts";
import { readElfLinkage } from "./elf.ts";
import { RootfsError } from "./errors.ts";
import { debianUpstreamVersion, fetchBusybox } from "./fetch-busybox.ts";
import { listBusyboxApplets } from "./guest-files.ts";
import { tempDir } from "./test-oci-helpers.ts";

const run = promisify(execFile);
const cli = fileURLToPath(new URL("./cli/fetch-busybox.ts", import.meta.url));

async function dpkg(args: string[]): Promise<string> {
  try {
    return (await run("dpkg", args)).stdout.trim();
  } catch {
    return "";
  }
}

async function leftoverWorkDirs(): Promise<string[]> {
  return (await readdir(tmpdir())).filter((name) => name.startsWith("sbx-fetch-busybox-"));
}

const hasDpkg = execFileSync("sh", ["-c", "command -v dpkg || true"], { encoding: "utf8" }).trim() !== "";
let nativeArch = "";
let foreignArches: string[] = [];
beforeAll(async () => {
  nativeArch = await dpkg(["--print-architecture"]);
  foreignArches = (await dpkg(["--print-foreign-architectures"])).split(/\s+/).filter(Boolean);
});

describe("debianUpstreamVersion", () => {
  it("drops the epoch and the Debian revision", () => {
    expect(debianUpstreamVersion("1:1.35.0-4+deb12u1+b1")).toBe("1.35.0");
    expect(debianUpstreamVersion("1.36.1-9")).toBe("1.36.1");
    expect(debianUpstreamVersion("1.36.1")).toBe("1.36.1");
  });
});

/** Runs the real setup command; skips (with the reason printed) when apt cannot download. */
async function fetchWithCli(
  dir: string,
  arch: Arch,
  skip: (reason: string) => void,
): Promise<{ stdout: string; stderr: string }> {
  const before = await leftoverWorkDirs();
  try {
    const result = await run(
      process.execPath,
      [
        "--conditions=@sbx/source",
        cli,
        "--arch",
        arch,
        "--version",
        "1.36.1",
        "--dir",
        dir,
        "--no-foreign-arch",
      ],
      { timeout: 240_000 },
    );
    expect(await leftoverWorkDirs()).toEqual(before);
    return result;
  } catch (error) {
    const stderr = String((error as { stderr?: string }).stderr ?? error);
    if (/BUSYBOX_FETCH_FAILED: apt-get download/.test(stderr)) {
      const reason = `apt-get download busybox-static:${arch} failed (offline?): ${stderr.split("\n").slice(-3).join(" ")}`;
      console.log(`fetch-busybox: skipped: ${reason}`);
      skip(reason);
    }
    throw error;
  }
}

describe("sbx-fetch-busybox (real apt download)", () => {
  it("installs Debian's busybox-static:amd64 with a sidecar and a SOURCE record", async (ctx) => {
    if (nativeArch !== "amd64" && !foreignArches.includes("amd64")) {
      console.log("fetch-busybox amd64: skipped: dpkg has no amd64 architecture on this host");
      ctx.skip();
    }
    // Each test owns its directory, removed by the test itself even when it fails.
    await using work = await tempDir("sbx-fetch-test-");
    const dir = work.path;
    const { stdout, stderr } = await fetchWithCli(dir, "amd64", (reason) => ctx.skip(reason));
    const result = JSON.parse(stdout) as { path: string; sha256: string; debianVersion: string };
    const target = join(dir, "1.36.1", "amd64");
    expect(result.path).toBe(join(target, "busybox"));
    expect((await readdir(target)).sort()).toEqual(["SOURCE", "busybox", "busybox.sha256"]);
    const resolved = await resolveBusybox({ dir, arch: "amd64" });
    expect(resolved).toMatchObject({ checksumVerified: true, sha256: result.sha256 });
    expect((await readFile(join(target, "busybox.sha256"), "utf8")).trim()).toBe(`${result.sha256}  busybox`);
    const source = await readFile(join(target, "SOURCE"), "utf8");
    expect(source).toContain(`debian-version=${result.debianVersion}`);
    expect(source).toContain("requested-version=1.36.1");
    if (debianUpstreamVersion(result.debianVersion) !== "1.36.1") {
      expect(stderr).toMatch(
        /warning: Debian's busybox-static:amd64 is .* installed under the 1\.36\.1 label/,
      );
    }
    expect((await listBusyboxApplets(result.path)).length).toBeGreaterThan(100);
  });

  it("installs busybox-static:arm64 when dpkg has the arm64 architecture", async (ctx) => {
    if (nativeArch !== "arm64" && !foreignArches.includes("arm64")) {
      const reason =
        "dpkg has no arm64 architecture; scripts/test.sh adds it when run as root (or run `sbx-fetch-busybox --arch arm64 --dir DIR` once)";
      console.log(`fetch-busybox arm64: skipped: ${reason}`);
      ctx.skip(reason);
    }
    await using work = await tempDir("sbx-fetch-test-");
    const dir = work.path;
    await fetchWithCli(dir, "arm64", (reason) => ctx.skip(reason));
    const resolved = await resolveBusybox({ dir, arch: "arm64" });
    expect(resolved.checksumVerified).toBe(true);
    expect((await readElfLinkage(resolved.path)).static).toBe(true);
    const applets = await listBusyboxApplets(resolved.path);
    expect(applets).toContain("ip");
    expect(applets).toContain("sh");
  });

  it("refuses a version mismatch with requireVersionMatch and writes nothing", async (ctx) => {
    if (nativeArch !== "amd64") ctx.skip("needs an amd64 dpkg host");
    const target = await mkdtemp(join(tmpdir(), "sbx-fetch-strict-"));
    try {
      const error = await fetchBusybox({
        dir: target,
        arch: "amd64",
        version: "0.0.1",
        requireVersionMatch: true,
      }).catch((e: unknown) => e);
      if (error instanceof RootfsError && error.message.startsWith("apt-get download"))
        ctx.skip("apt offline");
      expect(error).toBeInstanceOf(RootfsError);
      expect((error as RootfsError).code).toBe("BUSYBOX_FETCH_FAILED");
      expect(await readdir(target)).toEqual([]);
    } finally {
      await rm(target, { recursive: true, force: true });
    }
  });

  // dpkg and apt-get answer through logging shims that report no foreign architecture and change
  // nothing, so the test runs (and cannot alter the host) whatever architectures the host has.
  it.skipIf(!hasDpkg)("does not touch dpkg's architectures when told not to (needs dpkg)", async () => {
    await using work = await tempDir("sbx-fetch-test-");
    const dir = work.path;
    const shims = await mkdtemp(join(tmpdir(), "sbx-fetch-shims-"));
    const calls = join(shims, "calls");
    const realDpkg = (await run("sh", ["-c", "command -v dpkg"])).stdout.trim();
    await writeFile(
      join(shims, "dpkg"),
      `#!/bin/sh\necho "dpkg $*" >>${calls}\ncase "$1" in --print-foreign-architectures|--add-architecture) exit 0;; esac\nexec ${realDpkg} "$@"\n`,
      { mode: 0o755 },
    );
    await writeFile(join(shims, "apt-get"), `#!/bin/sh\necho "apt-get $*" >>${calls}\nexit 100\n`, {
      mode: 0o755,
    });
    const foreign = nativeArch === "arm64" ? "amd64" : "arm64";
    const hostForeignBefore = await dpkg(["--print-foreign-architectures"]);
    const path = process.env.PATH;
    process.env.PATH = `${shims}:${path}`;
    try {
      await expect(fetchBusybox({ dir, arch: foreign, enableForeignArch: false })).rejects.toMatchObject({
        code: "BUSYBOX_FETCH_FAILED",
        message: expect.stringContaining(`${foreign} is not a dpkg architecture`),
      });
      expect((await readFile(calls, "utf8")).trim().split("\n")).toEqual([
        "dpkg --print-architecture",
        "dpkg --print-foreign-architectures",
      ]);
      // The shims would have seen it: allowed, the fetcher adds the architecture and updates apt.
      await rm(calls);
      await expect(fetchBusybox({ dir, arch: foreign })).rejects.toMatchObject({ code: "COMMAND_FAILED" });
      expect((await readFile(calls, "utf8")).trim().split("\n")).toEqual([
        "dpkg --print-architecture",
        "dpkg --print-foreign-architectures",
        `dpkg --add-architecture ${foreign}`,
        "apt-get update",
      ]);
    } finally {
      process.env.PATH = path;
      await rm(shims, { recursive: true, force: true });
    }
    expect(await dpkg(["--print-foreign-architectures"])).toBe(hostForeignBefore);
  });
});
