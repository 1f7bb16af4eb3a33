import { chmod, copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sha256File } from "@sbx/arch";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type ArtifactResolver,
  assertCanRunFirecracker,
  type BootArtifacts,
  defaultArtifactResolver,
  resolveBootParameters,
  type TemplateSpec,
} from "./boot-parameters.ts";
import { createConfig, type OrchestratorConfig } from "./config.ts";
import { diffBootParameters, templateDriftReason, verifyTemplateFiles } from "./template-drift.ts";
import { type BuildManifest, buildManifestSchema } from "./template-manifest.ts";

const digest = (c: string) => c.repeat(64);

function fakeResolver(overrides: Partial<BootArtifacts> = {}): ArtifactResolver {
  return {
    async resolve(config) {
      return {
        firecracker: { path: "/fc", version: "v1.14.2", sha256: digest("a") },
        kernel: { path: "/vmlinux", sha256: digest("b") },
        busybox: { path: "/busybox", version: config.busyboxVersion, sha256: digest("c") },
        ...(config.cpuTemplate.kind === "custom"
          ? { customCpuTemplate: { path: config.cpuTemplate.path, sha256: digest("d") } }
          : {}),
        ...overrides,
      };
    },
  };
}

const spec: TemplateSpec = {
  ociManifestDigest: `sha256:${digest("e")}`,
  initScript: "#!/bin/sh\nexec /bin/sh\n",
  provisionScript: "apk add curl\n",
};

async function manifestFor(
  config: OrchestratorConfig,
  resolver = fakeResolver(),
): Promise<BuildManifest & { boot: NonNullable<BuildManifest["boot"]> }> {
  const boot = await resolveBootParameters(config, spec, resolver);
  return {
    ...buildManifestSchema.parse({
      schemaVersion: 1,
      id: "01JABCDEFGHJKMNPQRSTVWXYZ0",
      kind: "template",
      template: "base",
      createdAt: new Date().toISOString(),
      arch: "amd64",
      firecrackerVersion: "v1.14.2",
      boot,
      hostFingerprint: { vendor: "GenuineIntel" },
      memory: { sizeBytes: 2, ownedBytes: 2 },
      files: {
        "rootfs.ext4": { sizeBytes: 4, sha256: digest("1") },
        vmstate: { sizeBytes: 3, sha256: digest("2") },
        memory: { sizeBytes: 2, sha256: digest("3") },
        "memory.header": { sizeBytes: 5, sha256: digest("4") },
      },
    }),
    boot,
  };
}

describe("resolveBootParameters", () => {
  it("records every input that decides the VM", async () => {
    const config = createConfig({ targetArch: "amd64", cpuTemplate: "T2S" });
    const boot = await resolveBootParameters(config, spec, fakeResolver());
    expect(boot).toMatchObject({
      arch: "amd64",
      firecracker: { version: "v1.14.2", sha256: digest("a") },
      kernel: { path: "/vmlinux", sha256: digest("b") },
      kernelCommandLine: "console=ttyS0 reboot=k panic=1 pci=off",
      vcpuCount: 2,
      memoryMib: 512,
      smt: false,
      hugePages: "None",
      cpuTemplate: { kind: "static", name: "T2S" },
      busybox: { version: "1.36.1", sha256: digest("c") },
      ociManifestDigest: spec.ociManifestDigest,
    });
    expect(boot.initScriptSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(boot.provisionScriptSha256).not.toBe(boot.initScriptSha256);
    const unprovisioned = await resolveBootParameters(
      config,
      { ...spec, provisionScript: undefined },
      fakeResolver(),
    );
    expect(unprovisioned.provisionScriptSha256).toBeNull();
  });

  it("refuses SMT on arm64 and a bad spec", async () => {
    const arm = createConfig({ targetArch: "arm64" });
    await expect(resolveBootParameters(arm, { ...spec, smt: true }, fakeResolver())).rejects.toMatchObject({
      code: "INVALID_OPTIONS",
    });
    await expect(
      resolveBootParameters(arm, { ...spec, ociManifestDigest: "latest" }, fakeResolver()),
    ).rejects.toThrow(/ociManifestDigest/);
  });

  it("refuses to run Firecracker for another arch", () => {
    expect(() => assertCanRunFirecracker(createConfig({ targetArch: "arm64" }), "amd64")).toThrow(
      expect.objectContaining({ code: "ARCH_MISMATCH" }),
    );
    expect(() => assertCanRunFirecracker(createConfig({ targetArch: "amd64" }), "amd64")).not.toThrow();
  });
});

describe("templateDriftReason", () => {
  const config = createConfig({ targetArch: "amd64" });

  it("is null when nothing changed", async () => {
    const manifest = await manifestFor(config);
    expect(await templateDriftReason(manifest, config, { spec, resolver: fakeResolver() })).toBeNull();
  });

  it("names each input that changed", async () => {
    const manifest = await manifestFor(config);
    const cases: [string, Promise<string | null>][] = [
      [
        "kernel.sha256 changed: bbbbbbbbbbbb… → ffffffffffff…",
        templateDriftReason(manifest, config, {
          spec,
          resolver: fakeResolver({ kernel: { path: "/vmlinux", sha256: digest("f") } }),
        }),
      ],
      [
        "busybox.version changed: 1.36.1 → 1.37.0",
        templateDriftReason(manifest, createConfig({ targetArch: "amd64", busyboxVersion: "1.37.0" }), {
          spec,
          resolver: fakeResolver(),
        }),
      ],
      [
        "cpuTemplate.name changed: (none) → C3",
        templateDriftReason(manifest, createConfig({ targetArch: "amd64", cpuTemplate: "C3" }), {
          spec,
          resolver: fakeResolver(),
        }),
      ],
      [
        "memoryMib changed: 512 → 1024",
        templateDriftReason(manifest, config, {
          spec: { ...spec, memoryMib: 1024 },
          resolver: fakeResolver(),
        }),
      ],
      [
        "provisionScriptSha256 changed",
        templateDriftReason(manifest, config, {
          spec: { ...spec, provisionScript: "apk add git\n" },
          resolver: fakeResolver(),
        }),
      ],
      [
        "firecracker.version changed: v1.14.2 → v1.15.0",
        templateDriftReason(manifest, config, {
          spec,
          resolver: fakeResolver({ firecracker: { path: "/fc", version: "v1.15.0", sha256: digest("a") } }),
        }),
      ],
      [
        "kernelCommandLine changed",
        templateDriftReason(manifest, config, {
          spec: { ...spec, kernelCommandLine: "console=ttyS0" },
          resolver: fakeResolver(),
        }),
      ],
    ];
    for (const [expected, reason] of cases) {
      const text = await reason;
      expect(text).toContain('template "base" is stale');
      expect(text).toContain(expected);
    }
  });

  it("reports arch, CPU template kind and OCI image changes in one reason", async () => {
    const manifest = await manifestFor(config);
    const differences = diffBootParameters(manifest.boot, {
      ...manifest.boot,
      arch: "arm64",
      ociManifestDigest: `sha256:${digest("9")}`,
      cpuTemplate: { kind: "custom", path: "/t.json", sha256: digest("d") },
    });
    expect(differences.map((d) => d.path)).toEqual([
      "arch",
      "cpuTemplate.kind",
      "cpuTemplate.path",
      "cpuTemplate.sha256",
      "ociManifestDigest",
    ]);
  });

  it("counts the guest files, the ext4 options and the sbx version as build inputs", async () => {
    const manifest = await manifestFor(config, fakeResolver());
    expect(manifest.boot.sbxVersion).toMatch(/^\d+\.\d+\.\d+/);
    expect(manifest.boot.ext4).toEqual({ size: "auto", label: "rootfs" });
    const differences = diffBootParameters(manifest.boot, {
      ...manifest.boot,
      guestFilesSha256: digest("7"),
      ext4: { size: "2G", label: "rootfs" },
      sbxVersion: "99.0.0",
    });
    expect(differences.map((d) => d.path).sort()).toEqual(["ext4.size", "guestFilesSha256", "sbxVersion"]);
  });

  it("checks the template's files when given its directory", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sbx-template-"));
    try {
      const manifest = await manifestFor(config);
      await writeFile(join(dir, "rootfs.ext4"), "abcd");
      await writeFile(join(dir, "vmstate"), "toolong");
      expect(await verifyTemplateFiles(dir, manifest)).toEqual([
        "vmstate is 7 bytes, build.json says 3",
        "memory is missing",
        "memory.header is missing",
      ]);
      expect(await verifyTemplateFiles(dir, manifest, { digests: true })).toContain(
        "rootfs.ext4 does not match its recorded sha256",
      );
      const reason = await templateDriftReason(manifest, config, {
        spec,
        resolver: fakeResolver(),
        templateDir: dir,
      });
      expect(reason).toContain("memory is missing");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("defaultArtifactResolver", () => {
  let root: string;
  let config: OrchestratorConfig;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "sbx-artifacts-"));
    const arch = "amd64";
    for (const [dir, name, source] of [
      ["firecracker/v1.14.2", "firecracker", "/bin/true"],
      ["kernels/6.1", "vmlinux", "/bin/true"],
      ["busybox/1.36.1", "busybox", "/bin/true"],
    ] as const) {
      await mkdir(join(root, dir, arch), { recursive: true });
      await copyFile(source, join(root, dir, arch, name));
      await chmod(join(root, dir, arch, name), 0o755);
    }
    const busybox = join(root, "busybox/1.36.1", arch, "busybox");
    await writeFile(`${busybox}.sha256`, `${await sha256File(busybox)}  busybox\n`);
    config = createConfig({
      targetArch: arch,
      firecrackerRoot: join(root, "firecracker"),
      kernelRoot: join(root, "kernels"),
      busyboxDir: join(root, "busybox"),
    });
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it.skipIf(process.arch !== "x64")(
    "resolves and digests arch-specific artifacts (x86_64 host)",
    async () => {
      const artifacts = await defaultArtifactResolver.resolve(config);
      expect(artifacts.firecracker.path).toBe(join(root, "firecracker/v1.14.2/amd64/firecracker"));
      // /bin/true prints no version, so the configured one is recorded.
      expect(artifacts.firecracker.version).toBe("v1.14.2");
      expect(artifacts.busybox.sha256).toBe(await sha256File("/bin/true"));
      const boot = await resolveBootParameters(config, spec);
      expect(boot.kernel.path).toBe(join(root, "kernels/6.1/amd64/vmlinux"));
    },
  );

  it.skipIf(process.arch !== "x64")("fails at start when busybox's checksum sidecar is wrong", async () => {
    const busybox = join(root, "busybox/1.36.1/amd64/busybox");
    await writeFile(`${busybox}.sha256`, `${digest("0")}  busybox\n`);
    await expect(defaultArtifactResolver.resolve(config)).rejects.toMatchObject({
      code: "ARTIFACT_CHECKSUM_MISMATCH",
    });
    await writeFile(`${busybox}.sha256`, `${await sha256File(busybox)}  busybox\n`);
  });

  const fc = process.env.FIRECRACKER_BIN;
  it.skipIf(!fc)(
    `reads the real Firecracker version${fc ? "" : " (skipped: FIRECRACKER_BIN not set)"}`,
    async () => {
      const artifacts = await defaultArtifactResolver.resolve({ ...config, firecrackerBin: fc });
      expect(artifacts.firecracker.version).toMatch(/^v\d+\.\d+\.\d+/);
      expect(artifacts.firecracker.sha256).toBe(await sha256File(fc!));
    },
  );
});
