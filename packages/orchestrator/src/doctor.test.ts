import { chmod, copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sha256File } from "@sbx/arch";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createConfig, type OrchestratorConfig } from "./config.ts";
import { type DoctorCheck, formatDoctorReport, runDoctor } from "./doctor.ts";

let root: string;
let config: OrchestratorConfig;

function byId(checks: DoctorCheck[]): Record<string, DoctorCheck> {
  return Object.fromEntries(checks.map((c) => [c.id, c]));
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "sbx-doctor-"));
  const busyboxDir = join(root, "busybox", "1.36.1", "amd64");
  await mkdir(busyboxDir, { recursive: true });
  await copyFile("/bin/true", join(busyboxDir, "busybox"));
  await writeFile(join(busyboxDir, "busybox.sha256"), `${await sha256File("/bin/true")}  busybox\n`);
  config = createConfig({
    targetArch: "amd64",
    busyboxDir: join(root, "busybox"),
    firecrackerRoot: join(root, "firecracker"),
    kernelRoot: join(root, "kernels"),
    stateDir: join(root, "state", "nested"),
  });
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("runDoctor", () => {
  it("reports what is missing with a fix on every failing line", async () => {
    const checks = byId(
      await runDoctor(config, {
        kvmPath: join(root, "no-kvm"),
        unprivilegedUserfaultfdPath: join(root, "no-sysctl"),
        devUserfaultfdPath: join(root, "no-dev"),
        meminfoPath: join(root, "no-meminfo"),
        isRoot: false,
        hostArch: "amd64",
        kernelRelease: () => "6.1.0",
      }),
    );
    expect(checks.kvm).toMatchObject({ status: "fail", fix: expect.stringMatching(/virtualization/) });
    expect(checks.userfaultfd).toMatchObject({
      status: "fail",
      fix: expect.stringMatching(/unprivileged_userfaultfd=1/),
    });
    expect(checks["uffd-write-protect"]).toMatchObject({ status: "ok" });
    expect(checks.firecracker).toMatchObject({
      status: "fail",
      fix: expect.stringMatching(/FIRECRACKER_BIN/),
    });
    expect(checks.kernel).toMatchObject({ status: "fail", fix: expect.stringMatching(/vmlinux/) });
    expect(checks.iproute2?.status).toBe("warn");
    expect(checks["state-dir"]?.status).toBe("ok");
    for (const check of Object.values(checks)) {
      if (check.status !== "ok") expect(check.fix, check.id).toBeTruthy();
    }
  });

  it.skipIf(process.arch !== "x64")(
    "finds busybox through the build's resolver and verifies its checksum",
    async () => {
      const checks = byId(await runDoctor(config));
      expect(checks.busybox).toMatchObject({ status: "ok", summary: expect.stringMatching(/verified/) });
      await writeFile(join(root, "busybox/1.36.1/amd64/busybox.sha256"), `${"0".repeat(64)}  busybox\n`);
      const broken = byId(await runDoctor(config));
      expect(broken.busybox).toMatchObject({
        status: "fail",
        fix: expect.stringMatching(/sbx-fetch-busybox/),
      });
      await writeFile(
        join(root, "busybox/1.36.1/amd64/busybox.sha256"),
        `${await sha256File("/bin/true")}  busybox\n`,
      );
    },
  );

  it("warns about an arch mismatch and a kernel without write-protect", async () => {
    const arm = createConfig({ ...config, targetArch: "arm64", cpuTemplate: undefined });
    const checks = byId(await runDoctor(arm, { hostArch: "amd64", kernelRelease: () => "6.1.0" }));
    expect(checks.arch).toMatchObject({ status: "warn", fix: expect.stringMatching(/ARCH_MISMATCH/) });
    expect(checks["uffd-write-protect"]?.status).toBe("warn");
  });

  it("reports a custom CPU template that cannot be read", async () => {
    const custom = createConfig({
      ...config,
      cpuTemplate: undefined,
      customCpuTemplatePath: join(root, "none.json"),
    });
    expect(byId(await runDoctor(custom))["cpu-template"]?.status).toBe("fail");
  });

  it("checks the real host (kvm, userfaultfd, hugepages, e2fsprogs, ip)", async () => {
    const checks = byId(await runDoctor(config));
    for (const id of ["kvm", "userfaultfd", "hugepages", "e2fsprogs-mkfs", "e2fsprogs-fsck", "iproute2"]) {
      expect(checks[id], id).toBeDefined();
      console.log(`doctor on this host: ${id}: ${checks[id]?.status} ${checks[id]?.summary}`);
    }
    expect(checks["e2fsprogs-mkfs"]?.summary).toMatch(/^mkfs\.ext4 \d+\.\d+/);
  });

  const fc = process.env.FIRECRACKER_BIN;
  it.skipIf(!fc)(
    `runs the real Firecracker for its version${fc ? "" : " (skipped: FIRECRACKER_BIN not set)"}`,
    async () => {
      const checks = byId(await runDoctor({ ...config, firecrackerBin: fc }));
      expect(checks.firecracker?.summary).toMatch(/Firecracker v\d+\.\d+\.\d+/);
      expect(["ok", "warn"]).toContain(checks.firecracker?.status);
    },
  );

  it("fails Firecracker when the binary prints no version", async () => {
    const fake = join(root, "fake-firecracker");
    await copyFile("/bin/true", fake);
    await chmod(fake, 0o755);
    const checks = byId(await runDoctor({ ...config, firecrackerBin: fake }));
    if (process.arch === "x64") {
      expect(checks.firecracker).toMatchObject({
        status: "fail",
        summary: expect.stringMatching(/did not print/),
      });
    } else {
      expect(checks.firecracker?.status).toBe("fail");
    }
  });

  const jailer = process.env.JAILER_BIN;
  const firecracker = process.env.FIRECRACKER_BIN;
  it.skipIf(!jailer || !firecracker)(
    `reports the jailer and Firecracker as a pair${jailer && firecracker ? "" : " (skipped: JAILER_BIN or FIRECRACKER_BIN not set)"}`,
    async () => {
      const checks = byId(await runDoctor({ ...config, jailerBin: jailer, firecrackerBin: firecracker }));
      expect(checks.jailer).toMatchObject({
        status: "ok",
        summary: expect.stringMatching(
          /^jailer v\d+\.\d+\.\d+ with Firecracker v\d+\.\d+\.\d+: each VM in its own chroot under .*\/jail, uid\/gid from 200000-299999/,
        ),
      });
    },
  );

  it("fails without a jailer and without the opt-out, warns with the opt-out, fails a jailer that is no jailer", async () => {
    // No VM would start: the fix names both ways out.
    const missing = byId(await runDoctor({ ...config, jailerBin: undefined })).jailer;
    expect(missing).toMatchObject({ status: "fail", summary: expect.stringMatching(/no VM will start/) });
    expect(missing?.fix).toMatch(/JAILER_BIN/);
    expect(missing?.fix).toMatch(/SBX_UNJAILED=1/);
    expect(byId(await runDoctor({ ...config, jailerBin: undefined, unjailed: true })).jailer).toMatchObject({
      status: "warn",
      summary: expect.stringMatching(/^SBX_UNJAILED=1: Firecracker runs unjailed, as root/),
    });
    const checks = byId(await runDoctor({ ...config, jailerBin: "/bin/false", firecrackerBin: "/bin/true" }));
    expect(checks.jailer).toMatchObject({
      status: "fail",
      fix: expect.stringMatching(/JAILER_BIN|SBX_UNJAILED/),
    });
  });

  it("formats one line per check, fixes indented below", () => {
    const text = formatDoctorReport([
      { id: "kvm", status: "ok", summary: "/dev/kvm is usable" },
      { id: "busybox", status: "fail", summary: "missing", fix: "put it there" },
    ]);
    expect(text).toBe(
      "ok   kvm      /dev/kvm is usable\nFAIL busybox  missing\n              fix: put it there\n1 check failed\n",
    );
  });
});
