import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { checkBuildStore } from "./store-doctor.ts";

describe("sbx doctor: build store and chunk cache", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "sbx-store-doctor-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("says builds stay on this host without SBX_STORE_URL", async () => {
    expect(await checkBuildStore({ stateDir: dir }, {})).toEqual([
      expect.objectContaining({
        id: "build-store",
        status: "ok",
        summary: expect.stringMatching(/SBX_STORE_URL unset/),
      }),
    ]);
  });

  it("probes a configured store and reports what the cache holds against its limit", async () => {
    await mkdir(join(dir, "store"));
    const cache = join(dir, "state", "chunk-cache");
    await mkdir(join(cache, "chunks"), { recursive: true });
    await mkdir(join(cache, "tmp"));
    await writeFile(join(cache, "chunks", "a".repeat(64)), Buffer.alloc(3 * 2 ** 20));
    await writeFile(join(cache, "chunks", "b".repeat(64)), Buffer.alloc(2 ** 20));
    await writeFile(join(cache, "tmp", ".tmp-999999-x"), "half");
    const checks = await checkBuildStore(
      { stateDir: join(dir, "state") },
      { SBX_STORE_URL: `file://${join(dir, "store")}`, SBX_CHUNK_CACHE_SIZE: "64M" },
    );
    expect(checks).toEqual([
      expect.objectContaining({
        id: "build-store",
        status: "ok",
        summary: expect.stringMatching(/answers$/),
      }),
      expect.objectContaining({
        id: "chunk-cache",
        status: "ok",
        summary: expect.stringMatching(
          /2 chunks, 4\.0 MiB of 64\.0 MiB; .* free on its file system; 1 temp files/,
        ),
      }),
    ]);
  });

  it("warns when the cache's limit exceeds the free space of its file system", async () => {
    await mkdir(join(dir, "store"));
    const [, cache] = await checkBuildStore(
      { stateDir: dir },
      { SBX_STORE_URL: `file://${join(dir, "store")}`, SBX_CHUNK_CACHE_SIZE: "1000000G" },
    );
    expect(cache).toMatchObject({
      id: "chunk-cache",
      status: "warn",
      fix: expect.stringMatching(/lower SBX_CHUNK_CACHE_SIZE/),
    });
  });

  it("fails naming the variable to fix: half a credential, a bad cache size, a store that does not answer", async () => {
    const [half] = await checkBuildStore(
      { stateDir: dir },
      { SBX_STORE_URL: "s3://bucket/prefix", AWS_ACCESS_KEY_ID: "AKIAEXAMPLE" },
    );
    expect(half).toMatchObject({
      id: "build-store",
      status: "fail",
      fix: expect.stringMatching(/^fix AWS_SECRET_ACCESS_KEY/),
    });
    await mkdir(join(dir, "store"));
    const [, size] = await checkBuildStore(
      { stateDir: dir },
      { SBX_STORE_URL: `file://${join(dir, "store")}`, SBX_CHUNK_CACHE_SIZE: "lots" },
    );
    expect(size).toMatchObject({
      id: "chunk-cache",
      status: "fail",
      summary: expect.stringMatching(/SBX_CHUNK_CACHE_SIZE/),
    });
    const [down] = await checkBuildStore(
      { stateDir: dir },
      {
        SBX_STORE_URL: "s3://bucket/prefix",
        AWS_ENDPOINT_URL: "http://127.0.0.1:9",
        AWS_REGION: "us-east-1",
        AWS_ACCESS_KEY_ID: "AKIAEXAMPLE",
        AWS_SECRET_ACCESS_KEY: "secret",
      },
    );
    expect(down).toMatchObject({
      id: "build-store",
      status: "fail",
      summary: expect.stringMatching(/127\.0\.0\.1:9/),
    });
  }, 30_000);
});
