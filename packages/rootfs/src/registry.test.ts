import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { isTempName } from "@sbx/arch";
import { childPids } from "@sbx/arch/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readOciLayout } from "./oci-layout.ts";
import { parseImageReference } from "./reference.ts";
import { type PullProgress, parseAuthenticateHeader, pullImage } from "./registry.ts";
import { openFdCount, tempDir } from "./test-oci-helpers.ts";
import {
  pushLayout,
  registryToolsMissing,
  startBearerProxy,
  startRegistry,
  type TestRegistry,
} from "./test-registry.ts";
import { writeOciLayout } from "./testing/fixtures.ts";
import { unpackImage } from "./unpack.ts";

describe("parseImageReference", () => {
  it.each([
    ["alpine", "docker.io", "registry-1.docker.io", "library/alpine", "latest", undefined],
    ["docker.io/library/alpine", "docker.io", "registry-1.docker.io", "library/alpine", "latest", undefined],
    [
      "index.docker.io/library/alpine:3.20",
      "docker.io",
      "registry-1.docker.io",
      "library/alpine",
      "3.20",
      undefined,
    ],
    ["team/app:1.2", "docker.io", "registry-1.docker.io", "team/app", "1.2", undefined],
    [
      "registry.example:5000/team/app:1.2",
      "registry.example:5000",
      "registry.example:5000",
      "team/app",
      "1.2",
      undefined,
    ],
    ["localhost/app", "localhost", "localhost", "app", "latest", undefined],
    [
      `127.0.0.1:5000/a/b/c@sha256:${"a".repeat(64)}`,
      "127.0.0.1:5000",
      "127.0.0.1:5000",
      "a/b/c",
      undefined,
      `sha256:${"a".repeat(64)}`,
    ],
    [
      `ghcr.io/org/img:v1@sha256:${"b".repeat(64)}`,
      "ghcr.io",
      "ghcr.io",
      "org/img",
      "v1",
      `sha256:${"b".repeat(64)}`,
    ],
    ["[::1]:5000/app:x", "[::1]:5000", "[::1]:5000", "app", "x", undefined],
  ])("%s", (input, registry, apiHost, repository, tag, digest) => {
    const parsed = parseImageReference(input);
    expect(parsed).toMatchObject({ registry, apiHost, repository });
    expect(parsed.tag).toBe(tag);
    expect(parsed.digest).toBe(digest);
  });

  it("builds the canonical form", () => {
    expect(parseImageReference("alpine").canonical).toBe("docker.io/library/alpine:latest");
    expect(parseImageReference(`reg:5000/x@sha256:${"c".repeat(64)}`).canonical).toBe(
      `reg:5000/x@sha256:${"c".repeat(64)}`,
    );
  });

  it.each([
    ["", /empty/],
    ["Alpine", /lowercase/],
    ["team/App:1", /lowercase/],
    ["alpine:bad tag", /tag/],
    ["alpine@sha256:1234", /digest/],
    [`alpine@md5:${"a".repeat(32)}`, /digest/],
    ["reg:5000/", /empty/],
    ["a//b", /component/],
  ])("rejects %j", (input, message) => {
    expect(() => parseImageReference(input)).toThrow(message);
  });
});

describe("parseAuthenticateHeader", () => {
  it("reads Bearer and Basic challenges", () => {
    expect(
      parseAuthenticateHeader(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"',
      ),
    ).toEqual({
      scheme: "bearer",
      params: {
        realm: "https://auth.docker.io/token",
        service: "registry.docker.io",
        scope: "repository:library/alpine:pull",
      },
    });
    expect(parseAuthenticateHeader('Basic realm="sbx"')).toEqual({
      scheme: "basic",
      params: { realm: "sbx" },
    });
  });
});

/** Partial downloads and temp files left in a layout's blob directory. */
const leftoverDownloads = (dest: string) =>
  readdirSync(join(dest, "blobs/sha256")).filter((name) => name.includes("partial") || isTempName(name));

/** Pulls team/single:v1 into `dest` and returns its manifest, to learn the blobs a later pull fetches. */
async function probeManifest(host: string, dest: string): Promise<unknown> {
  const probe = await pullImage({ reference: `${host}/team/single:v1`, platform: "amd64", dest });
  return JSON.parse(readFileSync(join(dest, "blobs/sha256", probe.manifestDigest.slice(7)), "utf8"));
}

const missing = registryToolsMissing();
if (missing) console.log(`registry pull tests skipped: ${missing}`);

describe.skipIf(missing !== undefined)(
  `pullImage from Debian's docker-registry on 127.0.0.1${missing ? ` (skipped: ${missing})` : ""}`,
  () => {
    const login = { username: "alice", password: "s3cret-pw" };
    let open: TestRegistry;
    let locked: TestRegistry;
    let fixtures: AsyncDisposable & { path: string };

    beforeAll(async () => {
      fixtures = await tempDir("sbx-registry-fixtures-");
      [open, locked] = await Promise.all([startRegistry(), startRegistry(login)]);
      const single = join(fixtures.path, "single");
      await writeOciLayout({
        dir: single,
        tag: "v1",
        images: [
          {
            platform: { os: "linux", architecture: "amd64" },
            layers: [
              {
                entries: [
                  { path: "hello", content: "single" },
                  { path: "etc/", type: "directory" },
                ],
                compression: "gzip",
              },
              { entries: [{ path: "etc/zstd", content: "zstd layer" }], compression: "zstd" },
              { entries: [{ path: "big", content: Buffer.alloc(3 * 1024 * 1024, 7) }], compression: "none" },
            ],
          },
        ],
      });
      const multi = join(fixtures.path, "multi");
      await writeOciLayout({
        dir: multi,
        tag: "v1",
        images: [
          {
            platform: { os: "linux", architecture: "amd64" },
            layers: [{ entries: [{ path: "which", content: "amd64" }] }],
          },
          {
            platform: { os: "linux", architecture: "arm64", variant: "v8" },
            layers: [{ entries: [{ path: "which", content: "arm64" }] }],
          },
        ],
      });
      await Promise.all([
        pushLayout(single, "v1", `${open.host}/team/single:v1`),
        pushLayout(multi, "v1", `${open.host}/team/multi:v1`, { all: true }),
        pushLayout(multi, "v1", `${open.host}/team/dockerlist:v1`, { all: true, format: "v2s2" }),
        pushLayout(single, "v1", `${locked.host}/private/app:1.0`, {
          creds: `${login.username}:${login.password}`,
        }),
      ]);
    }, 120_000);

    afterAll(async () => {
      await open?.[Symbol.asyncDispose]();
      await locked?.[Symbol.asyncDispose]();
      await fixtures?.[Symbol.asyncDispose]();
      // Both registries and every skopeo are gone: no child process of this worker is left.
      for (const registry of [open, locked]) {
        expect(registry.process.exitCode ?? registry.process.signalCode).not.toBeNull();
      }
      expect(childPids({ zombies: false })).toEqual([]);
    });

    it("pulls a single-platform image (gzip, zstd, plain layers) and skips present blobs on the next pull", async () => {
      await using tmp = await tempDir();
      const fdsBefore = openFdCount();
      const dest = join(tmp.path, "layout");
      const events: PullProgress[] = [];
      const first = await pullImage({
        reference: `${open.host}/team/single:v1`,
        platform: "amd64",
        dest,
        onProgress: (p) => events.push(p),
      });
      expect(first.downloaded).toHaveLength(5); // 3 layers, config, manifest
      expect(first.skipped).toEqual([]);
      expect(events.filter((e) => e.kind === "layer" && e.status === "done")).toHaveLength(3);
      expect(events.some((e) => e.status === "downloading")).toBe(true);

      const second = await pullImage({ reference: `${open.host}/team/single:v1`, platform: "amd64", dest });
      expect(second.downloaded).toEqual([]);
      expect(second.skipped).toHaveLength(5);
      expect(second.manifestDigest).toBe(first.manifestDigest);

      const layout = await readOciLayout(dest);
      expect(layout.index.manifests).toHaveLength(1);
      const root = join(tmp.path, "root");
      await unpackImage({ layout, platform: "amd64", dest: root, tag: "v1" });
      expect(readFileSync(join(root, "hello"), "utf8")).toBe("single");
      expect(readFileSync(join(root, "etc/zstd"), "utf8")).toBe("zstd layer");
      expect(readFileSync(join(root, "big")).length).toBe(3 * 1024 * 1024);
      expect(leftoverDownloads(dest)).toEqual([]);
      expect(openFdCount()).toBe(fdsBefore);
    });

    it("re-downloads a present blob that is damaged", async () => {
      await using tmp = await tempDir();
      const dest = join(tmp.path, "layout");
      const first = await pullImage({ reference: `${open.host}/team/single:v1`, platform: "amd64", dest });
      const layer = (await readOciLayout(dest)).index.manifests[0]!;
      const manifest = JSON.parse(
        readFileSync(join(dest, "blobs/sha256", layer.digest.slice(7)), "utf8"),
      ) as {
        layers: { digest: string }[];
      };
      const victim = join(dest, "blobs/sha256", manifest.layers[0]!.digest.slice(7));
      const bytes = readFileSync(victim);
      bytes[10]! ^= 0xff;
      const { writeFileSync } = await import("node:fs");
      writeFileSync(victim, bytes);
      const second = await pullImage({ reference: `${open.host}/team/single:v1`, platform: "amd64", dest });
      expect(second.downloaded).toEqual([manifest.layers[0]!.digest]);
      expect(first.manifestDigest).toBe(second.manifestDigest);
    });

    it("selects the platform from a multi-platform OCI index and from a Docker manifest list", async () => {
      await using tmp = await tempDir();
      for (const repo of ["multi", "dockerlist"]) {
        for (const arch of ["amd64", "arm64"] as const) {
          const dest = join(tmp.path, `${repo}-${arch}`);
          const result = await pullImage({ reference: `${open.host}/team/${repo}:v1`, platform: arch, dest });
          expect(result.platform.architecture).toBe(arch);
          expect(result.resolvedDigest).not.toBe(result.manifestDigest);
          const root = join(tmp.path, `${repo}-${arch}-root`);
          await unpackImage({ layout: await readOciLayout(dest), platform: arch, dest: root });
          expect(readFileSync(join(root, "which"), "utf8")).toBe(arch);
        }
      }
      await expect(
        pullImage({
          reference: `${open.host}/team/multi:v1`,
          platform: { os: "linux", architecture: "riscv64" },
          dest: join(tmp.path, "none"),
        }),
      ).rejects.toThrow(/no image for linux\/riscv64; it has linux\/amd64, linux\/arm64\/v8/);
    });

    it("pulls by digest and checks it", async () => {
      await using tmp = await tempDir();
      const byTag = await pullImage({
        reference: `${open.host}/team/multi:v1`,
        platform: "arm64",
        dest: join(tmp.path, "a"),
      });
      const byDigest = await pullImage({
        reference: `${open.host}/team/multi@${byTag.resolvedDigest}`,
        platform: "arm64",
        dest: join(tmp.path, "b"),
      });
      expect(byDigest.manifestDigest).toBe(byTag.manifestDigest);
      await expect(
        pullImage({
          reference: `${open.host}/team/multi@sha256:${"0".repeat(64)}`,
          platform: "arm64",
          dest: join(tmp.path, "c"),
        }),
      ).rejects.toMatchObject({ code: "REGISTRY_NOT_FOUND" });
    });

    it("reports a missing repository or tag as REGISTRY_NOT_FOUND", async () => {
      await using tmp = await tempDir();
      await expect(
        pullImage({
          reference: `${open.host}/team/single:nope`,
          platform: "amd64",
          dest: join(tmp.path, "x"),
        }),
      ).rejects.toMatchObject({ code: "REGISTRY_NOT_FOUND" });
    });

    it("logs in with HTTP basic auth (htpasswd/bcrypt) and refuses without or with wrong credentials", async () => {
      await using tmp = await tempDir();
      const reference = `${locked.host}/private/app:1.0`;
      await expect(
        pullImage({ reference, platform: "amd64", dest: join(tmp.path, "anon") }),
      ).rejects.toMatchObject({
        code: "REGISTRY_AUTH_FAILED",
      });
      await expect(
        pullImage({
          reference,
          platform: "amd64",
          dest: join(tmp.path, "wrong"),
          auth: { username: "alice", password: "nope" },
        }),
      ).rejects.toMatchObject({ code: "REGISTRY_AUTH_FAILED" });
      const result = await pullImage({
        reference,
        platform: "amd64",
        dest: join(tmp.path, "ok"),
        auth: login,
      });
      expect(result.downloaded).toHaveLength(5);
      const root = join(tmp.path, "root");
      await unpackImage({
        layout: await readOciLayout(join(tmp.path, "ok")),
        platform: "amd64",
        dest: root,
        tag: "1.0",
      });
      expect(readFileSync(join(root, "hello"), "utf8")).toBe("single");
    });

    it("gets a bearer token from the realm, and retries 503s and dropped connections", async () => {
      await using tmp = await tempDir();
      const single = await pullImage({
        reference: `${open.host}/team/single:v1`,
        platform: "amd64",
        dest: join(tmp.path, "probe"),
      });
      const bigLayer = single.downloaded.find((d) => d !== single.manifestDigest)!;
      await using proxy = await startBearerProxy(
        open.host,
        { username: "bob", password: "token-pw" },
        {
          failOnce: ["/manifests/v1", "/blobs/"],
          resetOnce: ["/blobs/"],
        },
      );
      const dest = join(tmp.path, "layout");
      await expect(
        pullImage({
          reference: `${proxy.host}/team/single:v1`,
          platform: "amd64",
          dest: join(tmp.path, "anon"),
          retryDelayMs: 10,
        }),
      ).rejects.toMatchObject({ code: "REGISTRY_AUTH_FAILED" });
      const result = await pullImage({
        reference: `${proxy.host}/team/single:v1`,
        platform: "amd64",
        dest,
        auth: { username: "bob", password: "token-pw" },
        retryDelayMs: 10,
      });
      expect(result.downloaded).toHaveLength(5);
      // 401 + 503 + success for the manifest, 503 + reset + success for a blob: the retries happened.
      expect(proxy.requests.length - new Set(proxy.requests).size).toBeGreaterThanOrEqual(4);
      expect(proxy.tokenRequests.some((q) => q.includes("scope=repository%3Ateam%2Fsingle%3Apull"))).toBe(
        true,
      );
      expect(proxy.tokenRequests.some((q) => q.includes("service=sbx-proxy"))).toBe(true);
      expect(bigLayer).toBeDefined();
      const root = join(tmp.path, "root");
      await unpackImage({ layout: await readOciLayout(dest), platform: "amd64", dest: root });
      expect(readFileSync(join(root, "big")).length).toBe(3 * 1024 * 1024);
      expect(leftoverDownloads(dest)).toEqual([]);
    });

    it("resumes a blob cut off mid-way with a Range request, within a pull and in the next pull after an interruption", async () => {
      await using tmp = await tempDir();
      const manifest = (await probeManifest(open.host, join(tmp.path, "probe"))) as {
        layers: { digest: string; size: number }[];
      };
      const big = manifest.layers[2]!;
      const login = { username: "bob", password: "pw" };

      // Within one pull: the connection drops halfway, the retry asks for the rest.
      {
        await using proxy = await startBearerProxy(open.host, login, { resetOnce: [big.digest] });
        const result = await pullImage({
          reference: `${proxy.host}/team/single:v1`,
          platform: "amd64",
          dest: join(tmp.path, "within"),
          auth: login,
          retryDelayMs: 10,
        });
        expect(result.downloaded).toContain(big.digest);
        const ranges = proxy.blobRequests.filter((r) => r.path.endsWith(big.digest)).map((r) => r.range);
        expect(ranges).toHaveLength(2);
        expect(ranges[0]).toBeUndefined();
        const resumedAt = Number(/^bytes=(\d+)-$/.exec(ranges[1] ?? "")?.[1]);
        expect(resumedAt).toBeGreaterThan(0);
        expect(resumedAt).toBeLessThan(big.size);
      }

      // Across pulls: the first is aborted mid-blob and leaves its partial file; the next resumes it.
      const dest = join(tmp.path, "across");
      const partial = join(dest, "blobs/sha256", `${big.digest.slice(7)}.partial`);
      {
        await using proxy = await startBearerProxy(open.host, login, { stallOnce: [big.digest] });
        const controller = new AbortController();
        // Stop the pull once the half the proxy sends has reached the partial file.
        const watch = setInterval(() => {
          if ((statSync(partial, { throwIfNoEntry: false })?.size ?? 0) >= Math.floor(big.size / 2)) {
            controller.abort();
          }
        }, 20);
        try {
          await expect(
            pullImage({
              reference: `${proxy.host}/team/single:v1`,
              platform: "amd64",
              dest,
              auth: login,
              signal: controller.signal,
            }),
          ).rejects.toThrow();
        } finally {
          clearInterval(watch);
        }
      }
      const kept = statSync(partial).size;
      expect(kept).toBeGreaterThan(0);
      expect(kept).toBeLessThan(big.size);
      const fdsBefore = openFdCount();
      await using proxy = await startBearerProxy(open.host, login);
      const resumed = await pullImage({
        reference: `${proxy.host}/team/single:v1`,
        platform: "amd64",
        dest,
        auth: login,
      });
      expect(resumed.downloaded).toContain(big.digest);
      expect(proxy.blobRequests.filter((r) => r.path.endsWith(big.digest))).toEqual([
        { path: `/v2/team/single/blobs/${big.digest}`, range: `bytes=${kept}-` },
      ]);
      expect(leftoverDownloads(dest)).toEqual([]);
      const root = join(tmp.path, "root");
      await unpackImage({ layout: await readOciLayout(dest), platform: "amd64", dest: root });
      expect(readFileSync(join(root, "big")).length).toBe(3 * 1024 * 1024);
      expect(openFdCount()).toBe(fdsBefore);
    });

    it("refuses an altered config or layer blob, leaving no partial file and no index entry", async () => {
      await using tmp = await tempDir();
      const manifest = (await probeManifest(open.host, join(tmp.path, "probe"))) as {
        config: { digest: string };
        layers: { digest: string }[];
      };
      for (const victim of [manifest.config.digest, manifest.layers[2]!.digest]) {
        await using proxy = await startBearerProxy(
          open.host,
          { username: "bob", password: "pw" },
          { corrupt: [victim] },
        );
        const dest = join(tmp.path, `layout-${victim.slice(7, 15)}`);
        await expect(
          pullImage({
            reference: `${proxy.host}/team/single:v1`,
            platform: "amd64",
            dest,
            auth: { username: "bob", password: "pw" },
          }),
        ).rejects.toMatchObject({ code: "OCI_DIGEST_MISMATCH", details: { digest: victim } });
        // The altered blob leaves nothing; layers stopped alongside it keep their (intact) partial
        // files, which the next pull resumes.
        const left = readdirSync(join(dest, "blobs/sha256"));
        expect(left.filter((name) => name.startsWith(victim.slice(7)))).toEqual([]);
        expect(readdirSync(dest).sort()).toEqual(["blobs"]);
      }
    });
  },
);
