import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { FirecrackerLaunchError } from "./errors.ts";
import { buildJailerArgs, jailedPaths, linkIntoJail } from "./jailer.ts";

describe("buildJailerArgs", () => {
  it("builds the jailer argv with uid/gid, chroot base, cgroup v2 and Firecracker args after --", () => {
    const command = buildJailerArgs({
      jailerBinary: "/opt/fc/jailer",
      firecrackerBinary: "/opt/fc/firecracker",
      id: "vm-1",
      uid: 1234,
      gid: 1235,
      chrootBaseDir: "/srv/sbx",
      cgroups: { "cpu.max": "50000 100000", "memory.max": "256M" },
      parentCgroup: "sbx/vms",
      netns: "/var/run/netns/sbx-1",
      resourceLimits: { "no-file": 1024 },
      newPidNs: true,
      firecrackerArgs: ["--config-file", "/vm.json"],
    });
    expect(command.binary).toBe("/opt/fc/jailer");
    expect(command.args).toEqual([
      "--id",
      "vm-1",
      "--exec-file",
      "/opt/fc/firecracker",
      "--uid",
      "1234",
      "--gid",
      "1235",
      "--chroot-base-dir",
      "/srv/sbx",
      "--cgroup-version",
      "2",
      "--cgroup",
      "cpu.max=50000 100000",
      "--cgroup",
      "memory.max=256M",
      "--parent-cgroup",
      "sbx/vms",
      "--netns",
      "/var/run/netns/sbx-1",
      "--resource-limit",
      "no-file=1024",
      "--new-pid-ns",
      "--",
      "--api-sock",
      "/run/firecracker.socket",
      "--config-file",
      "/vm.json",
    ]);
    expect(command.chrootDir).toBe("/srv/sbx/firecracker/vm-1/root");
    expect(command.socketPath).toBe("/srv/sbx/firecracker/vm-1/root/run/firecracker.socket");
    expect(command.pidFile).toBe("/srv/sbx/firecracker/vm-1/root/firecracker.pid");
    expect(command.hostPath("/snap/mem")).toBe("/srv/sbx/firecracker/vm-1/root/snap/mem");
    expect(() => command.hostPath("/../etc/passwd")).toThrow(FirecrackerLaunchError);
    expect(() => command.hostPath("relative")).toThrow(/absolute/);
  });

  it("defaults to /srv/jailer and cgroup v2", () => {
    const command = buildJailerArgs({ firecrackerBinary: "/usr/bin/firecracker", id: "a", uid: 0, gid: 0 });
    expect(command.binary).toBe("jailer");
    expect(command.args.slice(8, 12)).toEqual(["--chroot-base-dir", "/srv/jailer", "--cgroup-version", "2"]);
    expect(command.chrootDir).toBe("/srv/jailer/firecracker/a/root");
  });

  it("rejects bad ids, ids, relative binaries, bad cgroup names and escaping parent cgroups", () => {
    const base = { firecrackerBinary: "/fc", id: "ok", uid: 1, gid: 1 };
    expect(() => buildJailerArgs({ ...base, id: "bad id" })).toThrow(/alphanumerics/);
    expect(() => buildJailerArgs({ ...base, id: "x".repeat(65) })).toThrow(/alphanumerics/);
    expect(() => buildJailerArgs({ ...base, uid: -1 })).toThrow(/uid/);
    expect(() => buildJailerArgs({ ...base, firecrackerBinary: "fc" })).toThrow(/absolute/);
    expect(() => buildJailerArgs({ ...base, cgroups: { "cpu max": 1 } })).toThrow(/cgroup file/);
    expect(buildJailerArgs({ ...base, cgroups: { "hugetlb.2MB.max": 0 } }).args).toContain(
      "hugetlb.2MB.max=0",
    );
    expect(() => buildJailerArgs({ ...base, parentCgroup: "../x" })).toThrow(/parentCgroup/);
  });

  it("maps host files to jailed paths", () => {
    expect(jailedPaths("/srv/jailer/firecracker/a/root", { "vmlinux.bin": "/images/vmlinux" })).toEqual({
      "vmlinux.bin": {
        hostSource: "/images/vmlinux",
        hostTarget: "/srv/jailer/firecracker/a/root/vmlinux.bin",
        jailedPath: "/vmlinux.bin",
      },
    });
    expect(() => jailedPaths("/r", { "../x": "/y" })).toThrow(FirecrackerLaunchError);
  });

  it("links files into the chroot with the jail's owner and returns their jailed paths", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sbx-test-jail-"));
    try {
      const source = join(dir, "vmlinux");
      await writeFile(source, "kernel");
      const command = buildJailerArgs({
        firecrackerBinary: "/fc",
        id: "j1",
        uid: process.getuid!(),
        gid: process.getgid!(),
        chrootBaseDir: join(dir, "srv"),
      });
      const paths = await linkIntoJail(
        command.chrootDir,
        { "vmlinux.bin": source },
        { uid: process.getuid!(), gid: process.getgid!() },
      );
      expect(paths).toEqual({ "vmlinux.bin": "/vmlinux.bin" });
      const target = command.hostPath("/vmlinux.bin");
      expect(await readFile(target, "utf8")).toBe("kernel");
      expect((await stat(target)).ino).toBe((await stat(source)).ino);
      await linkIntoJail(
        command.chrootDir,
        { "vmlinux.bin": source },
        { uid: process.getuid!(), gid: process.getgid!() },
      );
      await expect(
        linkIntoJail(command.chrootDir, { x: join(dir, "missing") }, { uid: 0, gid: 0 }),
      ).rejects.toThrow(/cannot link/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
