import { describe, expect, it } from "vitest";
import { chunkCacheOptionsFromEnv, parseByteSize } from "./chunk-cache-from-env.ts";
import { FilesystemStore } from "./filesystem-store.ts";
import { S3Store } from "./s3-store.ts";
import { parseStoreUrl, storeFromEnv } from "./store-from-env.ts";

describe("storeFromEnv", () => {
  it("is undefined without SBX_STORE_URL", () => {
    expect(storeFromEnv({})).toBeUndefined();
  });

  it("parses s3:// and file:// locations", () => {
    expect(parseStoreUrl("s3://sbx-builds/prod/eu")).toEqual({
      kind: "s3",
      bucket: "sbx-builds",
      prefix: "prod/eu",
    });
    expect(parseStoreUrl("s3://sbx-builds")).toEqual({ kind: "s3", bucket: "sbx-builds", prefix: "" });
    expect(parseStoreUrl("file:///var/lib/sbx-store/")).toEqual({
      kind: "file",
      directory: "/var/lib/sbx-store",
    });
  });

  it("builds the backend the URL names", async () => {
    await using fs = storeFromEnv({ SBX_STORE_URL: "file:///srv/store" });
    expect(fs).toBeInstanceOf(FilesystemStore);
    await using s3 = storeFromEnv({
      SBX_STORE_URL: "s3://sbx-builds/p",
      AWS_ENDPOINT_URL: "http://127.0.0.1:9000",
      AWS_ACCESS_KEY_ID: "a",
      AWS_SECRET_ACCESS_KEY: "b",
    });
    expect(s3).toBeInstanceOf(S3Store);
    expect(s3?.description).toBe("s3://sbx-builds/p/ at http://127.0.0.1:9000");
  });

  it.each([
    [{ SBX_STORE_URL: "http://x/y" }, "SBX_STORE_URL"],
    [{ SBX_STORE_URL: "s3://Bad_Bucket/p" }, "SBX_STORE_URL"],
    [{ SBX_STORE_URL: "file://host/dir" }, "SBX_STORE_URL"],
    [{ SBX_STORE_URL: "s3://sbx-builds/p/.hidden" }, "SBX_STORE_URL"],
    [{ SBX_STORE_URL: "s3://sbx-builds", AWS_ACCESS_KEY_ID: "a" }, "AWS_SECRET_ACCESS_KEY"],
    [{ SBX_STORE_URL: "s3://sbx-builds", AWS_SECRET_ACCESS_KEY: "b" }, "AWS_ACCESS_KEY_ID"],
    [{ SBX_STORE_URL: "s3://sbx-builds", AWS_ENDPOINT_URL: "localhost:9000" }, "AWS_ENDPOINT_URL"],
    [{ SBX_STORE_URL: "" }, "SBX_STORE_URL"],
  ])("rejects %j naming %s", (env, variable) => {
    expect(() => storeFromEnv(env)).toThrow(expect.objectContaining({ code: "CONFIG_INVALID", variable }));
  });
});

describe("chunkCacheOptionsFromEnv", () => {
  it("reads the directory and size, with defaults", () => {
    expect(chunkCacheOptionsFromEnv({ directory: "/var/lib/sbx/chunk-cache" }, {})).toEqual({
      directory: "/var/lib/sbx/chunk-cache",
      maxBytes: 10 * 2 ** 30,
    });
    expect(
      chunkCacheOptionsFromEnv(
        { directory: "/d" },
        { SBX_CHUNK_CACHE_DIR: "/cache", SBX_CHUNK_CACHE_SIZE: "512M" },
      ),
    ).toEqual({ directory: "/cache", maxBytes: 512 * 2 ** 20 });
    expect(parseByteSize("20GiB")).toBe(20 * 2 ** 30);
    expect(parseByteSize("4096")).toBe(4096);
    expect(parseByteSize("1kb")).toBe(1024);
  });

  it.each([
    [{ SBX_CHUNK_CACHE_SIZE: "lots" }, "SBX_CHUNK_CACHE_SIZE"],
    [{ SBX_CHUNK_CACHE_SIZE: "0" }, "SBX_CHUNK_CACHE_SIZE"],
    [{ SBX_CHUNK_CACHE_DIR: "relative/dir" }, "SBX_CHUNK_CACHE_DIR"],
  ])("rejects %j naming %s", (env, variable) => {
    expect(() => chunkCacheOptionsFromEnv({ directory: "/d" }, env)).toThrow(
      expect.objectContaining({ code: "CONFIG_INVALID", variable }),
    );
  });
});
