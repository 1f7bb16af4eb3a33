import { copyFileSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { hostArch } from "./arch.ts";
import { resolveArtifact } from "./artifacts.ts";
import { sha256File } from "./checksum.ts";
import { realArm64Elf, withTempDir } from "./test-fixtures.ts";

const host = hostArch();
const other = host === "amd64" ? "arm64" : "amd64";

function placeHostBinary(path: string): void {
  mkdirSync(join(path, ".."), { recursive: true });
  copyFileSync("/bin/true", path);
}

describe("resolveArtifact", () => {
  it("prefers the arch-specific path", async () => {
    await withTempDir(async (root) => {
      placeHostBinary(join(root, "v1.14.2", host, "firecracker"));
      placeHostBinary(join(root, "v1.14.2", "firecracker"));
      expect(await resolveArtifact({ root, version: "v1.14.2", name: "firecracker", arch: host })).toEqual({
        path: join(root, "v1.14.2", host, "firecracker"),
        layout: "arch",
      });
    });
  });

  it("falls back to the legacy path when the arch path does not exist", async () => {
    await withTempDir(async (root) => {
      placeHostBinary(join(root, "v1.14.2", "firecracker"));
      expect(await resolveArtifact({ root, version: "v1.14.2", name: "firecracker", arch: host })).toEqual({
        path: join(root, "v1.14.2", "firecracker"),
        layout: "legacy",
      });
    });
  });

  it("lists every candidate and why it was rejected when nothing is found", async () => {
    await withTempDir(async (root) => {
      const error = await resolveArtifact({ root, version: "6.1", name: "vmlinux", arch: "arm64" }).catch(
        (caught: unknown) => caught,
      );
      expect(error).toMatchObject({ code: "ARTIFACT_NOT_FOUND" });
      const message = (error as Error).message;
      expect(message).toContain(join(root, "6.1", "arm64", "vmlinux"));
      expect(message).toContain(join(root, "6.1", "vmlinux"));
      expect(message).toContain("does not exist");
    });
  });

  it("reports, not skips, an arch path that is not a directory", async () => {
    await withTempDir(async (root) => {
      mkdirSync(join(root, "v1"), { recursive: true });
      writeFileSync(join(root, "v1", host), "a file where the arch directory belongs");
      placeHostBinary(join(root, "v1", "firecracker"));
      await expect(
        resolveArtifact({ root, version: "v1", name: "firecracker", arch: host }),
      ).rejects.toMatchObject({
        code: "ARTIFACT_UNREADABLE",
        message: expect.stringContaining("ENOTDIR"),
      });
    });
  });

  it("reports, not skips, a symlink loop at the arch path", async () => {
    await withTempDir(async (root) => {
      mkdirSync(join(root, "v1", host), { recursive: true });
      symlinkSync("firecracker", join(root, "v1", host, "firecracker"));
      placeHostBinary(join(root, "v1", "firecracker"));
      await expect(
        resolveArtifact({ root, version: "v1", name: "firecracker", arch: host }),
      ).rejects.toMatchObject({
        code: "ARTIFACT_UNREADABLE",
        message: expect.stringContaining("ELOOP"),
      });
    });
  });

  it("reports a directory where the artifact should be", async () => {
    await withTempDir(async (root) => {
      mkdirSync(join(root, "v1", host, "firecracker"), { recursive: true });
      await expect(
        resolveArtifact({ root, version: "v1", name: "firecracker", arch: host }),
      ).rejects.toMatchObject({
        code: "ARTIFACT_UNREADABLE",
      });
    });
  });

  it("never hands a legacy binary of the host arch to the other arch", async () => {
    await withTempDir(async (root) => {
      placeHostBinary(join(root, "v1", "firecracker"));
      await expect(
        resolveArtifact({ root, version: "v1", name: "firecracker", arch: other }),
      ).rejects.toMatchObject({
        code: "ARTIFACT_ARCH_MISMATCH",
        details: { layout: "legacy", expected: other },
      });
    });
  });

  it.skipIf(!realArm64Elf())("accepts a real arm64 binary at the arm64 path", async () => {
    await withTempDir(async (root) => {
      mkdirSync(join(root, "1.36.1", "arm64"), { recursive: true });
      copyFileSync(realArm64Elf()!, join(root, "1.36.1", "arm64", "busybox"));
      const found = await resolveArtifact({ root, version: "1.36.1", name: "busybox", arch: "arm64" });
      expect(found.layout).toBe("arch");
    });
  });

  it("skips the arch check for non-binary artifacts when asked", async () => {
    await withTempDir(async (root) => {
      mkdirSync(join(root, "v1", "arm64"), { recursive: true });
      writeFileSync(join(root, "v1", "arm64", "rootfs.ext4"), "data");
      const found = await resolveArtifact({
        root,
        version: "v1",
        name: "rootfs.ext4",
        arch: "arm64",
        verifyArch: false,
      });
      expect(found.layout).toBe("arch");
    });
  });

  it.each([
    ["..", "firecracker"],
    ["v1/../..", "firecracker"],
    ["v1", "../firecracker"],
    ["", "firecracker"],
  ])("rejects version %j and name %j that are not single path segments", async (version, name) => {
    await expect(resolveArtifact({ root: "/tmp", version, name, arch: host })).rejects.toMatchObject({
      code: "INVALID_OPTIONS",
    });
  });
});

describe("resolveArtifact checksums", () => {
  async function layout(root: string): Promise<{ path: string; sha256: string }> {
    const path = join(root, "v1", host, "firecracker");
    placeHostBinary(path);
    return { path, sha256: await sha256File(path) };
  }

  it("verifies a bare-hex sidecar and a sha256sum-style sidecar", async () => {
    await withTempDir(async (root) => {
      const { path, sha256 } = await layout(root);
      writeFileSync(`${path}.sha256`, `${sha256}\n`);
      const options = {
        root,
        version: "v1",
        name: "firecracker",
        arch: host,
        checksum: { kind: "sidecar" },
      } as const;
      expect(await resolveArtifact(options)).toMatchObject({ sha256, checksumVerified: true });
      writeFileSync(`${path}.sha256`, `${sha256.toUpperCase()}  firecracker\n`);
      expect(await resolveArtifact(options)).toMatchObject({ sha256, checksumVerified: true });
      writeFileSync(`${path}.sha256`, `${sha256} *firecracker\n`);
      expect(await resolveArtifact(options)).toMatchObject({ sha256, checksumVerified: true });
    });
  });

  it("rejects a sidecar that names another file, a wrong digest and garbage", async () => {
    await withTempDir(async (root) => {
      const { path, sha256 } = await layout(root);
      const options = {
        root,
        version: "v1",
        name: "firecracker",
        arch: host,
        checksum: { kind: "sidecar" },
      } as const;
      writeFileSync(`${path}.sha256`, `${sha256}  jailer\n`);
      await expect(resolveArtifact(options)).rejects.toMatchObject({ code: "ARTIFACT_CHECKSUM_MISMATCH" });
      writeFileSync(`${path}.sha256`, `${"0".repeat(64)}\n`);
      await expect(resolveArtifact(options)).rejects.toMatchObject({
        code: "ARTIFACT_CHECKSUM_MISMATCH",
        details: { actual: sha256 },
      });
      writeFileSync(`${path}.sha256`, "not a digest\n");
      await expect(resolveArtifact(options)).rejects.toMatchObject({ code: "ARTIFACT_CHECKSUM_MISSING" });
    });
  });

  it("detects a file changed after its sidecar was written, on every call", async () => {
    await withTempDir(async (root) => {
      const { path, sha256 } = await layout(root);
      writeFileSync(`${path}.sha256`, sha256);
      const options = {
        root,
        version: "v1",
        name: "firecracker",
        arch: host,
        checksum: { kind: "sidecar" },
      } as const;
      await resolveArtifact(options);
      copyFileSync("/bin/false", path);
      await expect(resolveArtifact(options)).rejects.toMatchObject({ code: "ARTIFACT_CHECKSUM_MISMATCH" });
    });
  });

  it("requires the sidecar unless the caller allows unverified artifacts", async () => {
    await withTempDir(async (root) => {
      const { sha256 } = await layout(root);
      const base = { root, version: "v1", name: "firecracker", arch: host } as const;
      await expect(resolveArtifact({ ...base, checksum: { kind: "sidecar" } })).rejects.toMatchObject({
        code: "ARTIFACT_CHECKSUM_MISSING",
      });
      expect(
        await resolveArtifact({ ...base, checksum: { kind: "sidecar", allowUnverified: true } }),
      ).toMatchObject({
        sha256,
        checksumVerified: false,
      });
    });
  });

  it("checks a pinned digest", async () => {
    await withTempDir(async (root) => {
      const { sha256 } = await layout(root);
      const base = { root, version: "v1", name: "firecracker", arch: host } as const;
      expect(await resolveArtifact({ ...base, checksum: { kind: "pinned", sha256 } })).toMatchObject({
        checksumVerified: true,
      });
      await expect(
        resolveArtifact({ ...base, checksum: { kind: "pinned", sha256: "f".repeat(64) } }),
      ).rejects.toMatchObject({ code: "ARTIFACT_CHECKSUM_MISMATCH" });
      await expect(
        resolveArtifact({ ...base, checksum: { kind: "pinned", sha256: "xyz" } }),
      ).rejects.toMatchObject({
        code: "INVALID_OPTIONS",
      });
    });
  });
});
