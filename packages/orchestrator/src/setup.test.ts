import { existsSync, readdirSync, readFileSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolveFirecrackerBinary, resolveKernel } from "./boot-parameters.ts";
import { createConfig } from "./config.ts";
import type { ProgressEvent } from "./progress.ts";
import { newestKernel, type SetupOptions, setupArtifacts, setupCommandFor } from "./setup.ts";
import { openFdCount } from "./test-capabilities.ts";
import {
  compileElf,
  mirrorToolsMissing,
  publishKernel,
  publishRelease,
  type ReleaseMirror,
  releaseTarball,
  sha256,
  startReleaseMirror,
  startTestProxy,
} from "./test-release-mirror.ts";

const VERSION = "v1.14.2";
const TARBALL = `/releases/download/${VERSION}/firecracker-${VERSION}-x86_64.tgz`;

/** Every file under dir, relative, including dot files (temp names would show up here). */
function listTree(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath, entry.name).slice(dir.length + 1))
    .sort();
}

describe("setupCommandFor", () => {
  it("names only what is missing, with only the settings that differ from the defaults", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sbx-setup-command-"));
    try {
      const config = createConfig({
        targetArch: "amd64",
        firecrackerRoot: join(dir, "fc"),
        kernelRoot: join(dir, "kernels"),
      });
      expect(await setupCommandFor(config)).toBe(
        `sbx setup --arch amd64 --firecracker-dir ${join(dir, "fc")} --kernel-dir ${join(dir, "kernels")}`,
      );
      expect(await setupCommandFor(config, { kernel: false })).toBe(
        `sbx setup --arch amd64 --firecracker-dir ${join(dir, "fc")} --no-kernel`,
      );
      const withBinary = createConfig({
        targetArch: "amd64",
        firecrackerBin: "/bin/true",
        kernelRoot: join(dir, "kernels"),
      });
      expect(await setupCommandFor(withBinary)).toBe(
        `sbx setup --arch amd64 --kernel-dir ${join(dir, "kernels")} --no-firecracker`,
      );
      expect(await setupCommandFor(withBinary, { kernel: false })).toBeUndefined();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("newestKernel", () => {
  it("picks the highest patch release of the line, ignoring other lines and suffixed files", () => {
    const keys = [
      "firecracker-ci/v1.14/x86_64/vmlinux-6.1.99",
      "firecracker-ci/v1.14/x86_64/vmlinux-6.1.141",
      "firecracker-ci/v1.14/x86_64/vmlinux-6.1.141.config",
      "firecracker-ci/v1.14/x86_64/vmlinux-6.10.2",
      "firecracker-ci/v1.14/x86_64/vmlinux-5.10.240",
    ];
    expect(newestKernel(keys, "6.1")).toBe("firecracker-ci/v1.14/x86_64/vmlinux-6.1.141");
    expect(newestKernel(keys, "5.10")).toBe("firecracker-ci/v1.14/x86_64/vmlinux-5.10.240");
    expect(newestKernel(keys, "4.14")).toBeUndefined();
  });
});

const missing = mirrorToolsMissing();

describe.skipIf(missing !== undefined)(
  `setupArtifacts against a loopback release mirror${missing ? ` (skipped: ${missing})` : ""}`,
  () => {
    let root: string;
    let mirror: ReleaseMirror;
    let tarball: Buffer;
    let kernel: Buffer;
    let armTarball: Buffer;

    beforeAll(async () => {
      root = await mkdtemp(join(tmpdir(), "sbx-setup-"));
      // Padding makes the firecracker member (and the tarball) large enough that a cut lands mid-body.
      [tarball, armTarball] = await Promise.all([
        releaseTarball({ version: VERSION, arch: "amd64", padBytes: 2 * 1024 * 1024 }),
        releaseTarball({ version: VERSION, arch: "amd64", binaryArch: "arm64" }),
      ]);
      const kernelDir = await mkdtemp(join(tmpdir(), "sbx-setup-kernel-"));
      kernel = await readFile(await compileElf(kernelDir, "vmlinux", "amd64"));
      await rm(kernelDir, { recursive: true, force: true });
      mirror = await startReleaseMirror();
    }, 120_000);

    afterAll(async () => {
      await mirror?.[Symbol.asyncDispose]();
      await rm(root, { recursive: true, force: true });
    });

    /** A fresh install root and a mirror with the good release and two CI kernels of the 6.1 line. */
    async function fresh(
      name: string,
    ): Promise<SetupOptions & { firecrackerRoot: string; kernelRoot: string }> {
      mirror.files.clear();
      mirror.requests.length = 0;
      mirror.truncateOnce.clear();
      mirror.ranges = true;
      publishRelease(mirror, VERSION, "amd64", tarball);
      publishKernel(mirror, "v1.14", "amd64", "6.1.141", kernel);
      publishKernel(mirror, "v1.14", "amd64", "6.1.99", Buffer.from("an older kernel, never fetched"));
      const dir = join(root, name);
      await mkdir(dir);
      return {
        arch: "amd64",
        firecrackerVersion: VERSION,
        firecrackerRoot: join(dir, "firecracker"),
        kernelRoot: join(dir, "kernels"),
        kernelVersion: "6.1",
        releaseBaseUrl: mirror.releaseBaseUrl,
        kernelBucketUrl: mirror.kernelBucketUrl,
        retryDelayMs: 1,
      };
    }

    it("installs firecracker, jailer and the newest CI kernel where the orchestrator resolves them, then does nothing on a second run", async () => {
      const options = await fresh("happy");
      const fdsBefore = openFdCount();
      const events: ProgressEvent[] = [];
      const first = await setupArtifacts(options, { onProgress: (event) => events.push(event) });
      expect(first.firecracker).toMatchObject({ status: "installed", verification: "published" });
      expect(first.jailer).toMatchObject({ status: "installed", verification: "published" });
      expect(first.kernel).toMatchObject({
        status: "installed",
        verification: "unpinned",
        source: `${mirror.kernelBucketUrl}/firecracker-ci/v1.14/x86_64/vmlinux-6.1.141`,
        sha256: sha256(kernel),
      });
      expect(listTree(options.firecrackerRoot)).toEqual([
        `${VERSION}/amd64/SOURCE`,
        `${VERSION}/amd64/firecracker`,
        `${VERSION}/amd64/firecracker.sha256`,
        `${VERSION}/amd64/jailer`,
        `${VERSION}/amd64/jailer.sha256`,
      ]);
      expect(listTree(options.kernelRoot)).toEqual([
        "6.1/amd64/vmlinux",
        "6.1/amd64/vmlinux.SOURCE",
        "6.1/amd64/vmlinux.sha256",
      ]);
      // The orchestrator's own resolution finds (and checksum-verifies) what setup installed.
      const config = createConfig({
        targetArch: "amd64",
        firecrackerRoot: options.firecrackerRoot,
        kernelRoot: options.kernelRoot,
        firecrackerVersion: VERSION,
        kernelVersion: "6.1",
      });
      expect((await resolveFirecrackerBinary(config)).sha256).toBe(first.firecracker!.sha256);
      expect((await resolveKernel(config)).sha256).toBe(sha256(kernel));
      // Byte progress for the tarball, ending at its full size.
      const tarballEvents = events.filter((event) => event.task === `firecracker-${VERSION}-x86_64.tgz`);
      expect(tarballEvents.length).toBeGreaterThan(2);
      expect(tarballEvents.at(-1)).toMatchObject({ done: true, bytes: tarball.length });
      expect(
        tarballEvents.some((event) => event.totalBytes === tarball.length && event.bytes < tarball.length),
      ).toBe(true);

      mirror.requests.length = 0;
      const second = await setupArtifacts(options);
      expect(second.firecracker?.status).toBe("present");
      expect(second.jailer?.status).toBe("present");
      expect(second.kernel?.status).toBe("present");
      expect(mirror.requests).toEqual([]);
      expect(openFdCount()).toBe(fdsBefore);
    });

    it("refuses a tarball whose published sum does not match, installing nothing and keeping no download", async () => {
      const options = await fresh("wrong-sum");
      publishRelease(
        mirror,
        VERSION,
        "amd64",
        tarball,
        `${"0".repeat(64)}  firecracker-${VERSION}-x86_64.tgz\n`,
      );
      await expect(setupArtifacts(options)).rejects.toMatchObject({
        code: "CHECKSUM_MISMATCH",
        details: { expected: "0".repeat(64), actual: sha256(tarball) },
      });
      expect(listTree(options.firecrackerRoot)).toEqual([]);
      expect(existsSync(options.kernelRoot)).toBe(false);
    });

    it("refuses a kernel that does not match --kernel-sha256", async () => {
      const options = await fresh("wrong-kernel-sum");
      await expect(
        setupArtifacts({ ...options, firecracker: false, kernelSha256: "1".repeat(64) }),
      ).rejects.toMatchObject({
        code: "CHECKSUM_MISMATCH",
      });
      expect(listTree(options.kernelRoot)).toEqual([]);
      expect(listTree(options.firecrackerRoot)).toEqual([]);
    });

    it("resumes a truncated download with a Range request, in the same run and in the next one", async () => {
      const options = await fresh("truncated");
      mirror.truncateOnce.add(TARBALL);
      // No retries: the cut-off body fails this run, leaving only the partial download behind.
      await expect(setupArtifacts({ ...options, retries: 0 })).rejects.toMatchObject({
        code: "DOWNLOAD_FAILED",
      });
      const downloads = join(options.firecrackerRoot, ".downloads");
      expect(listTree(options.firecrackerRoot)).toEqual([
        `.downloads/firecracker-${VERSION}-x86_64.tgz.partial`,
      ]);
      const kept = readFileSync(join(downloads, `firecracker-${VERSION}-x86_64.tgz.partial`)).length;
      expect(kept).toBeGreaterThan(0);
      expect(kept).toBeLessThan(tarball.length);

      mirror.requests.length = 0;
      const resumed = await setupArtifacts(options);
      expect(resumed.firecracker?.status).toBe("installed");
      const tarballRequests = mirror.requests.filter((request) => request.path === TARBALL);
      expect(tarballRequests).toEqual([{ path: TARBALL, range: `bytes=${kept}-` }]);
      expect(listTree(downloads)).toEqual([]);

      // Within one run: the cut is retried from where it stopped.
      const again = await fresh("truncated-retry");
      mirror.truncateOnce.add(TARBALL);
      await setupArtifacts({ ...again, kernel: false });
      const ranges = mirror.requests
        .filter((request) => request.path === TARBALL)
        .map((request) => request.range);
      expect(ranges).toHaveLength(2);
      expect(ranges[0]).toBeUndefined();
      expect(ranges[1]).toMatch(/^bytes=[1-9]\d*-$/);
    });

    it("refuses to share a download with a live process, and takes over a stale lock", async () => {
      const options = await fresh("locked");
      const downloads = join(options.firecrackerRoot, ".downloads");
      await mkdir(downloads, { recursive: true });
      const lock = join(downloads, `firecracker-${VERSION}-x86_64.tgz.lock`);
      // pid 1 is always alive: another setup is downloading this file.
      await writeFile(lock, "1\n");
      await expect(setupArtifacts({ ...options, kernel: false })).rejects.toMatchObject({
        code: "NOT_AVAILABLE",
        details: { owner: 1 },
      });
      expect(listTree(options.firecrackerRoot)).toEqual([
        `.downloads/firecracker-${VERSION}-x86_64.tgz.lock`,
      ]);
      // A pid that cannot exist (above pid_max): the lock is stale.
      await writeFile(lock, "4194305\n");
      const result = await setupArtifacts({ ...options, kernel: false });
      expect(result.firecracker?.status).toBe("installed");
      expect(existsSync(lock)).toBe(false);
    });

    it("starts over when the server ignores the Range header", async () => {
      const options = await fresh("no-ranges");
      mirror.truncateOnce.add(TARBALL);
      mirror.ranges = false;
      const result = await setupArtifacts({ ...options, kernel: false });
      expect(result.firecracker?.sha256).toBeDefined();
      expect(mirror.requests.filter((request) => request.path === TARBALL)).toHaveLength(2);
    });

    it("reports a release or kernel the mirror does not have as DOWNLOAD_NOT_FOUND", async () => {
      const options = await fresh("not-found");
      await expect(setupArtifacts({ ...options, firecrackerVersion: "v9.9.9" })).rejects.toMatchObject({
        code: "DOWNLOAD_NOT_FOUND",
        details: { status: 404 },
      });
      await expect(
        setupArtifacts({ ...options, firecracker: false, kernelVersion: "4.14" }),
      ).rejects.toMatchObject({
        code: "DOWNLOAD_NOT_FOUND",
      });
      await expect(
        setupArtifacts({
          ...options,
          firecracker: false,
          kernelUrl: `${mirror.origin}/nowhere/vmlinux-6.1.1`,
        }),
      ).rejects.toMatchObject({ code: "DOWNLOAD_NOT_FOUND", details: { status: 404 } });
      expect(listTree(options.firecrackerRoot)).toEqual([]);
      expect(listTree(options.kernelRoot)).toEqual([]);
    });

    it("refuses an arm64 release offered as the x86_64 one (ARCH_MISMATCH), installing nothing", async () => {
      const options = await fresh("wrong-arch");
      publishRelease(mirror, VERSION, "amd64", armTarball);
      await expect(setupArtifacts(options)).rejects.toMatchObject({
        code: "ARCH_MISMATCH",
        details: { expected: "amd64", detected: "arm64" },
      });
      expect(listTree(options.firecrackerRoot)).toEqual([]);
      // The same for a kernel of the wrong arch.
      const armDir = await mkdtemp(join(tmpdir(), "sbx-setup-armkernel-"));
      const armKernel = await readFile(await compileElf(armDir, "vmlinux", "arm64"));
      await rm(armDir, { recursive: true, force: true });
      publishKernel(mirror, "v1.14", "amd64", "6.1.200", armKernel);
      await expect(setupArtifacts({ ...options, firecracker: false })).rejects.toMatchObject({
        code: "ARCH_MISMATCH",
      });
      expect(listTree(options.kernelRoot)).toEqual([]);
    });

    it("installs offline from --from DIR, with the release's sums file beside the tarball", async () => {
      const options = await fresh("offline");
      const from = join(root, "offline-files");
      await mkdir(from);
      const name = `firecracker-${VERSION}-x86_64.tgz`;
      await writeFile(join(from, name), tarball);
      await writeFile(join(from, `${name}.sha256.txt`), `${sha256(tarball)}  ${name}\n`);
      await writeFile(join(from, "vmlinux-6.1.141"), kernel);
      mirror.requests.length = 0;
      const result = await setupArtifacts({
        ...options,
        from,
        releaseBaseUrl: "http://127.0.0.1:9/none",
        kernelBucketUrl: "http://127.0.0.1:9/none",
      });
      expect(result.firecracker?.status).toBe("installed");
      expect(result.kernel?.sha256).toBe(sha256(kernel));
      expect(mirror.requests).toEqual([]);
      // The user's files are theirs: setup copies, never moves or deletes them.
      expect(readdirSync(from).sort()).toEqual([name, `${name}.sha256.txt`, "vmlinux-6.1.141"]);

      await rm(join(from, `${name}.sha256.txt`));
      await expect(setupArtifacts({ ...options, from, force: true, kernel: false })).rejects.toMatchObject({
        code: "DOWNLOAD_NOT_FOUND",
      });
      // A pinned digest stands in for the missing sums file.
      const pinned = await setupArtifacts({
        ...options,
        from,
        force: true,
        kernel: false,
        pinnedSha256: { [name]: sha256(tarball) },
      });
      expect(pinned.firecracker?.verification).toBe("pinned");
    });

    it("goes through the configured proxy", async () => {
      const options = await fresh("proxy");
      await using proxy = await startTestProxy();
      const result = await setupArtifacts({ ...options, proxy: { httpProxy: proxy.url } });
      expect(result.kernel?.status).toBe("installed");
      expect(proxy.targets.length).toBeGreaterThan(0);
      expect(new Set(proxy.targets)).toEqual(new Set([new URL(mirror.origin).host]));
    });

    it("replaces an installed binary that no longer matches its sidecar", async () => {
      const options = await fresh("damaged");
      await setupArtifacts(options);
      const installed = join(options.firecrackerRoot, VERSION, "amd64", "firecracker");
      await copyFile("/bin/true", installed);
      const repaired = await setupArtifacts(options);
      expect(repaired.firecracker?.status).toBe("installed");
      expect(repaired.kernel?.status).toBe("present");
    });
  },
);
