import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { kvmSkipReason, openFdCount, openFdTargets } from "@sbx/arch/testing";
import { describe, expect, it } from "vitest";
import { checkCompatibility } from "./compat.ts";
import { cpuidKey, fingerprintToFile, parseFingerprint } from "./fingerprint.ts";
import { ARM64_KVM_IOCTLS, hostFingerprint } from "./host.ts";

const fdCount = openFdCount;
/** This process's fds on /dev/kvm and KVM's anonymous inodes (kvm-vm, kvm-vcpu:N). */
const kvmFds = () => openFdTargets(/^\/dev\/kvm$|^anon_inode:kvm/).sort();

const kvm = kvmSkipReason() === undefined && process.arch === "x64";
if (!kvm) console.log("[cpu-template] host fingerprint test skipped: needs /dev/kvm on x86_64");

describe("hostFingerprint", () => {
  it.skipIf(!kvm)(
    "reads this host through /dev/kvm and /proc/cpuinfo, and closes every KVM fd it opened",
    () => {
      const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
      hostFingerprint(); // warm-up: whatever the first call opens for good (libraries) is open before counting
      const before = { fds: fdCount(), kvm: kvmFds() };
      const host = hostFingerprint();
      expect(kvmFds()).toEqual(before.kvm);
      expect(fdCount()).toBe(before.fds);
      expect(host.vendor).toBe(/^vendor_id\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim());
      expect(host.cpu.family).toBe(Number(/^cpu family\s*:\s*(\d+)$/m.exec(cpuinfo)?.[1]));
      expect(host.cpu.model).toBe(Number(/^model\s*:\s*(\d+)$/m.exec(cpuinfo)?.[1]));
      expect(host.cpuid.size).toBeGreaterThan(10);
      // KVM offers sse2 (leaf 1 edx bit 26) on every x86_64 host.
      expect((host.cpuid.get(cpuidKey(1, 0))?.[3] ?? 0) & (1 << 26)).not.toBe(0);
      // The host can take its own snapshots back.
      expect(checkCompatibility({ source: host, target: host }).compatible).toBe(true);
      // Stored as JSON in a template's metadata and read back for the compatibility check.
      const stored = JSON.parse(JSON.stringify(fingerprintToFile(host)));
      expect(parseFingerprint(stored)).toEqual({ ...host, cpu: expect.objectContaining(host.cpu) });
    },
  );

  it("on arm64 reads MIDR fields and Features, and never needs a cpu family", () => {
    const cpuinfo =
      "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n";
    const host = hostFingerprint({ arch: "arm64", cpuinfo, kernel: "6.1.0" });
    expect(host).toMatchObject({ vendor: "arm64:0x41", cpu: { implementer: 0x41, part: 0xd0c } });
    expect(host.kvmCapabilities).toContain("atomics");
  });

  it("on x86 a missing family or model is an error", () => {
    expect(() => hostFingerprint({ arch: "amd64", cpuinfo: "vendor_id : GenuineIntel\n" })).toThrow(
      /cpu family/,
    );
  });
});

const crossGcc = (() => {
  try {
    execFileSync("aarch64-linux-gnu-gcc", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

describe("arm64 KVM ioctls", () => {
  it.skipIf(!crossGcc)("match <linux/kvm.h> as compiled for aarch64", () => {
    const source = `#include <linux/kvm.h>
unsigned long v[] = { KVM_CREATE_VM, KVM_CREATE_VCPU, KVM_ARM_PREFERRED_TARGET, KVM_ARM_VCPU_INIT,
  KVM_GET_ONE_REG, sizeof(struct kvm_vcpu_init), sizeof(struct kvm_one_reg) };`;
    const assembly = execFileSync("aarch64-linux-gnu-gcc", ["-x", "c", "-S", "-o", "-", "-"], {
      input: source,
      encoding: "utf8",
    });
    const values = [...assembly.matchAll(/\.xword\s+(\d+)/g)].map((m) => Number(m[1]));
    const io = ARM64_KVM_IOCTLS;
    // The struct sizes are what readArm64Registers lays out in its scratch memory.
    expect(values).toEqual([
      io.KVM_CREATE_VM,
      io.KVM_CREATE_VCPU,
      io.KVM_ARM_PREFERRED_TARGET,
      io.KVM_ARM_VCPU_INIT,
      io.KVM_GET_ONE_REG,
      32,
      16,
    ]);
  });
});
