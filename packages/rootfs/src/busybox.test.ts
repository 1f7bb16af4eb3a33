import { appendFile, copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sha256File } from "@sbx/arch";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DEFAULT_BUSYBOX_VERSION, resolveBusybox } from "./busybox.ts";
import { RootfsError } from "./errors.ts";
import { writeBusyboxFixture } from "./testing/index.ts";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sbx-busybox-test-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(RootfsError);
    return (error as RootfsError).code;
  }
  throw new Error("expected a RootfsError");
}

describe("resolveBusybox", () => {
  it("defaults to version 1.36.1 and accepts a sha256sum-format sidecar", async () => {
    const path = await writeBusyboxFixture({ dir, arch: "amd64", sidecar: "sha256sum" });
    expect(DEFAULT_BUSYBOX_VERSION).toBe("1.36.1");
    const resolved = await resolveBusybox({ dir, arch: "amd64" });
    expect(resolved).toMatchObject({ path, version: "1.36.1", arch: "amd64", checksumVerified: true });
    expect(resolved.sha256).toBe(await sha256File("/bin/busybox"));
  });

  it("accepts a bare-hex sidecar", async () => {
    await writeBusyboxFixture({ dir, arch: "amd64", sidecar: "bare", version: "9.9" });
    expect((await resolveBusybox({ dir, arch: "amd64", version: "9.9" })).checksumVerified).toBe(true);
  });

  it("verifies the sidecar on every call, not only the first", async () => {
    const path = await writeBusyboxFixture({ dir, arch: "amd64" });
    await resolveBusybox({ dir, arch: "amd64" });
    await appendFile(path, "tampered");
    expect(await codeOf(resolveBusybox({ dir, arch: "amd64" }))).toBe("BUSYBOX_CHECKSUM_MISMATCH");
  });

  it("rejects a sidecar that names another file", async () => {
    const path = await writeBusyboxFixture({ dir, arch: "amd64", sidecar: "none" });
    await writeFile(`${path}.sha256`, `${await sha256File(path)}  toybox\n`);
    expect(await codeOf(resolveBusybox({ dir, arch: "amd64" }))).toBe("BUSYBOX_CHECKSUM_MISMATCH");
  });

  it("refuses a missing sidecar unless allowUnverified is passed explicitly", async () => {
    await writeBusyboxFixture({ dir, arch: "amd64", sidecar: "none" });
    expect(await codeOf(resolveBusybox({ dir, arch: "amd64" }))).toBe("BUSYBOX_CHECKSUM_MISSING");
    const resolved = await resolveBusybox({ dir, arch: "amd64", allowUnverified: true });
    expect(resolved.checksumVerified).toBe(false);
  });

  it("checks the real architecture, not the directory name", async () => {
    await writeBusyboxFixture({ dir, arch: "arm64" });
    expect(await codeOf(resolveBusybox({ dir, arch: "arm64" }))).toBe("BUSYBOX_ARCH_MISMATCH");
  });

  it("refuses a dynamically linked binary with BUSYBOX_NOT_STATIC", async () => {
    await writeBusyboxFixture({ dir, arch: "amd64", source: "/bin/ls" });
    const error = await resolveBusybox({ dir, arch: "amd64" }).catch((e: unknown) => e as RootfsError);
    expect(error).toBeInstanceOf(RootfsError);
    expect((error as RootfsError).code).toBe("BUSYBOX_NOT_STATIC");
    expect((error as RootfsError).message).toMatch(/interpreter \/lib64\/ld-linux-x86-64\.so\.2/);
  });

  it("says how to populate the directory when busybox is missing", async () => {
    const error = await resolveBusybox({ dir, arch: "arm64" }).catch((e: unknown) => e as RootfsError);
    expect((error as RootfsError).code).toBe("BUSYBOX_NOT_FOUND");
    expect((error as RootfsError).message).toContain(
      `sbx-fetch-busybox --arch arm64 --version 1.36.1 --dir ${dir}`,
    );
  });

  it("uses the legacy {dir}/{version}/busybox layout only when the arch path is absent", async () => {
    await mkdir(join(dir, "1.36.1"), { recursive: true });
    await copyFile("/bin/busybox", join(dir, "1.36.1", "busybox"));
    await writeFile(join(dir, "1.36.1", "busybox.sha256"), `${await sha256File("/bin/busybox")}\n`);
    expect((await resolveBusybox({ dir, arch: "amd64" })).path).toBe(join(dir, "1.36.1", "busybox"));
  });

  it("rejects a version that is not one path segment", async () => {
    expect(await codeOf(resolveBusybox({ dir, arch: "amd64", version: "../x" }))).toBe("INVALID_OPTIONS");
  });
});

describe("busyboxOptionsFromEnv", () => {
  it("reads HOST_BUSYBOX_DIR and BUSYBOX_VERSION, defaulting the version", async () => {
    const { busyboxOptionsFromEnv } = await import("./busybox.ts");
    expect(busyboxOptionsFromEnv({ HOST_BUSYBOX_DIR: "/fc-busybox" })).toEqual({
      dir: "/fc-busybox",
      version: "1.36.1",
    });
    expect(busyboxOptionsFromEnv({ HOST_BUSYBOX_DIR: "/b", BUSYBOX_VERSION: " 1.37.0 " })).toEqual({
      dir: "/b",
      version: "1.37.0",
    });
    expect(() => busyboxOptionsFromEnv({})).toThrow(/HOST_BUSYBOX_DIR is not set/);
  });
});
