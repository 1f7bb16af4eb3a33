// This host's fingerprint, in the same model as Firecracker's fingerprint files: on x86_64 the CPUID
// KVM supports (KVM_GET_SUPPORTED_CPUID on /dev/kvm, through @sbx/arch/native) and the feature MSR
// IA32_ARCH_CAPABILITIES (KVM_GET_MSRS on /dev/kvm); plus /proc/cpuinfo and the kernel release.
import { closeSync, openSync, readFileSync } from "node:fs";
import { release } from "node:os";
import { type Arch, hostArch } from "@sbx/arch";
import { libc, nativeView } from "@sbx/arch/native";
import { CpuTemplateError } from "./errors.ts";
import { ARM64_ID_REGISTERS, IA32_ARCH_CAPABILITIES } from "./features.ts";
import { cpuidKey, type Fingerprint, familyModelStepping, vendorString } from "./fingerprint.ts";

// <linux/kvm.h>: _IOWR(KVMIO=0xAE, nr, 8-byte header struct)
const KVM_GET_SUPPORTED_CPUID = 0xc008ae05;
const KVM_GET_MSRS = 0xc008ae88;
const MAX_ENTRIES = 256;

// <sys/mman.h>: an anonymous private read-write mapping, for the structs KVM fills in.
const PROT_READ_WRITE = 0x3;
const MAP_PRIVATE_ANONYMOUS = 0x22;

function withNativeMemory<T>(length: number, use: (address: number, view: DataView) => T): T {
  const address = libc.mmap(0, length, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS, -1, 0).value;
  if (address === -1) throw new CpuTemplateError("HOST_READ_FAILED", "mmap failed");
  try {
    const buffer = nativeView(address, length);
    return use(address, new DataView(buffer.buffer, buffer.byteOffset, length));
  } finally {
    libc.munmap(address, length);
  }
}

/** `<linux/kvm.h>` ioctls for reading an arm64 vCPU's ID registers (checked against gcc in host.test.ts). */
export const ARM64_KVM_IOCTLS = Object.freeze({
  KVM_CREATE_VM: 0xae01,
  KVM_CREATE_VCPU: 0xae41,
  KVM_ARM_PREFERRED_TARGET: 0x8020aeaf,
  KVM_ARM_VCPU_INIT: 0x4020aeae,
  KVM_GET_ONE_REG: 0x4010aeab,
});
/** MIDR_EL1's KVM register id: implementer and part, as Firecracker's arm64 fingerprints carry it. */
const MIDR_EL1 = "0x603000000013c000";

function openKvm(): number {
  try {
    return openSync("/dev/kvm", "r+");
  } catch (cause) {
    throw new CpuTemplateError(
      "HOST_READ_FAILED",
      "cannot open /dev/kvm (KVM is needed to read what guests can be offered)",
      { cause },
    );
  }
}

/**
 * What a guest vCPU sees in its ID registers on this arm64 host: a throwaway VM and vCPU initialised to
 * KVM's preferred target (as Firecracker does), then KVM_GET_ONE_REG for each register the fleet logic
 * compares. Values a kernel cannot report are left out, not guessed.
 */
function readArm64Registers(kvm: number): Map<string, bigint> {
  const io = ARM64_KVM_IOCTLS;
  const vm = libc.ioctl(kvm, io.KVM_CREATE_VM, 0);
  if (vm.value < 0) throw new CpuTemplateError("HOST_READ_FAILED", `KVM_CREATE_VM failed: errno ${vm.errno}`);
  try {
    const vcpu = libc.ioctl(vm.value, io.KVM_CREATE_VCPU, 0);
    if (vcpu.value < 0)
      throw new CpuTemplateError("HOST_READ_FAILED", `KVM_CREATE_VCPU failed: errno ${vcpu.errno}`);
    try {
      // [0, 32): struct kvm_vcpu_init; [40, 56): struct kvm_one_reg; [56, 64): the register's value.
      return withNativeMemory(64, (address, view) => {
        if (libc.ioctl(vm.value, io.KVM_ARM_PREFERRED_TARGET, address).value !== 0)
          throw new CpuTemplateError("HOST_READ_FAILED", "KVM_ARM_PREFERRED_TARGET failed");
        if (libc.ioctl(vcpu.value, io.KVM_ARM_VCPU_INIT, address).value !== 0)
          throw new CpuTemplateError("HOST_READ_FAILED", "KVM_ARM_VCPU_INIT failed");
        const registers = new Map<string, bigint>();
        for (const id of [MIDR_EL1, ...Object.keys(ARM64_ID_REGISTERS)]) {
          view.setBigUint64(40, BigInt(id), true);
          view.setBigUint64(48, BigInt(address + 56), true);
          if (libc.ioctl(vcpu.value, io.KVM_GET_ONE_REG, address + 40).value === 0)
            registers.set(id, view.getBigUint64(56, true));
        }
        return registers;
      });
    } finally {
      closeSync(vcpu.value);
    }
  } finally {
    closeSync(vm.value);
  }
}

/**
 * `firecrackerVersion` is the Firecracker this host runs (`firecracker --version`); fingerprints record
 * it so a resume can refuse a snapshot format the target cannot load (see assertSnapshotLoadable). The
 * host alone cannot tell, so it is "unknown" unless given.
 */
export function hostFingerprint(
  options: { arch?: Arch; cpuinfo?: string; kernel?: string; firecrackerVersion?: string } = {},
): Fingerprint {
  const arch = options.arch ?? hostArch();
  const firecrackerVersion = options.firecrackerVersion?.trim() || "unknown";
  const cpuinfo = options.cpuinfo ?? readFileSync("/proc/cpuinfo", "utf8");
  const kernelVersion = options.kernel ?? release();
  const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.+)$`, "m").exec(cpuinfo)?.[1]?.trim();
  if (arch === "arm64") {
    // /proc/cpuinfo on arm64 has no "cpu family": read the MIDR fields and Features, never fail on family.
    const implementer = field("CPU implementer");
    const part = field("CPU part");
    if (!implementer || !part)
      throw new CpuTemplateError("HOST_READ_FAILED", "/proc/cpuinfo lacks CPU implementer/part");
    // On an arm64 host, what KVM offers a guest; a cpuinfo passed in (tests, other hosts) has no registers.
    let registers = new Map<string, bigint>();
    if (options.cpuinfo === undefined && hostArch() === "arm64") {
      const kvm = openKvm();
      try {
        registers = readArm64Registers(kvm);
      } finally {
        closeSync(kvm);
      }
    }
    return {
      arch,
      vendor: `arm64:0x${Number(implementer).toString(16)}`,
      cpu: { implementer: Number(implementer), part: Number(part) },
      firecrackerVersion,
      kernelVersion,
      microcodeVersion: field("CPU revision") ?? "unknown",
      cpuid: new Map(),
      msrs: new Map(),
      registers,
      kvmCapabilities: (field("Features") ?? "").split(/\s+/).filter(Boolean),
    };
  }
  if (field("cpu family") === undefined || field("model") === undefined)
    throw new CpuTemplateError("HOST_READ_FAILED", "/proc/cpuinfo lacks cpu family/model on an x86 host");
  const kvm = openKvm();
  try {
    const cpuid = withNativeMemory(8 + MAX_ENTRIES * 40, (address, view) => {
      view.setUint32(0, MAX_ENTRIES, true);
      const result = libc.ioctl(kvm, KVM_GET_SUPPORTED_CPUID, address);
      if (result.value !== 0)
        throw new CpuTemplateError(
          "HOST_READ_FAILED",
          `KVM_GET_SUPPORTED_CPUID failed: errno ${result.errno}`,
        );
      const map = new Map<`${number}.${number}`, [number, number, number, number]>();
      const count = view.getUint32(0, true);
      for (let i = 0; i < count; i++) {
        const at = 8 + i * 40;
        const regs: [number, number, number, number] = [
          view.getUint32(at + 12, true),
          view.getUint32(at + 16, true),
          view.getUint32(at + 20, true),
          view.getUint32(at + 24, true),
        ];
        map.set(cpuidKey(view.getUint32(at, true), view.getUint32(at + 4, true)), regs);
      }
      return map;
    });
    const msrs = new Map<number, bigint>();
    withNativeMemory(8 + 16, (address, view) => {
      view.setUint32(0, 1, true);
      view.setUint32(8, IA32_ARCH_CAPABILITIES, true);
      const result = libc.ioctl(kvm, KVM_GET_MSRS, address);
      if (result.value === 1) msrs.set(IA32_ARCH_CAPABILITIES, view.getBigUint64(16, true));
    });
    const leaf0 = cpuid.get(cpuidKey(0, 0));
    const leaf1 = cpuid.get(cpuidKey(1, 0));
    if (!leaf0 || !leaf1)
      throw new CpuTemplateError("HOST_READ_FAILED", "KVM offered no cpuid leaves 0 and 1");
    return {
      arch,
      vendor: vendorString(leaf0[1], leaf0[3], leaf0[2]),
      cpu: familyModelStepping(leaf1[0]),
      firecrackerVersion,
      kernelVersion,
      microcodeVersion: field("microcode") ?? "unknown",
      cpuid,
      msrs,
      registers: new Map(),
      kvmCapabilities: [],
    };
  } finally {
    closeSync(kvm);
  }
}
