// This host's fingerprint, in the same model as Firecracker's fingerprint files: on x86_64 the CPUID
// KVM supports (KVM_GET_SUPPORTED_CPUID on /dev/kvm, through ffi-rs) and the feature MSR
// IA32_ARCH_CAPABILITIES (KVM_GET_MSRS on /dev/kvm); plus /proc/cpuinfo and the kernel release.
import { closeSync, openSync, readFileSync } from "node:fs";
import { release } from "node:os";
import { type Arch, hostArch } from "@sbx/arch";
import { createExternalBuffer, DataType, type FieldType, load, open } from "ffi-rs";
import { CpuTemplateError } from "./errors.ts";
import { IA32_ARCH_CAPABILITIES } from "./features.ts";
import { cpuidKey, type Fingerprint, familyModelStepping, vendorString } from "./fingerprint.ts";

const LIBRARY = "sbx-cpu-template-libc";
let opened = false;
function libcCall(funcName: string, retType: DataType, paramsType: DataType[], paramsValue: number[]) {
  if (!opened) {
    open({ library: LIBRARY, path: "libc.so.6" });
    opened = true;
  }
  return load({
    library: LIBRARY,
    funcName,
    retType,
    paramsType: paramsType as FieldType[],
    paramsValue,
    errno: true,
  }) as unknown as {
    value: number;
    errnoCode: number;
  };
}

// <linux/kvm.h>: _IOWR(KVMIO=0xAE, nr, 8-byte header struct)
const KVM_GET_SUPPORTED_CPUID = 0xc008ae05;
const KVM_GET_MSRS = 0xc008ae88;
const MAX_ENTRIES = 256;

function withNativeMemory<T>(length: number, use: (address: number, view: DataView) => T): T {
  const address = libcCall(
    "mmap",
    DataType.I64,
    [DataType.I64, DataType.I64, DataType.I32, DataType.I32, DataType.I32, DataType.I64],
    [0, length, 3, 0x22, -1, 0],
  ).value;
  if (address === -1) throw new CpuTemplateError("HOST_READ_FAILED", "mmap failed");
  try {
    const pointer = load({
      library: LIBRARY,
      funcName: "memset",
      retType: DataType.External,
      paramsType: [DataType.I64, DataType.I32, DataType.I64],
      paramsValue: [address, 0, 0],
    });
    const buffer = createExternalBuffer(pointer as never, length);
    return use(address, new DataView(buffer.buffer, buffer.byteOffset, length));
  } finally {
    libcCall("munmap", DataType.I32, [DataType.I64, DataType.I64], [address, length]);
  }
}

export function hostFingerprint(
  options: { arch?: Arch; cpuinfo?: string; kernel?: string } = {},
): Fingerprint {
  const arch = options.arch ?? hostArch();
  const cpuinfo = options.cpuinfo ?? readFileSync("/proc/cpuinfo", "utf8");
  const kernelVersion = options.kernel ?? release();
  const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.+)$`, "m").exec(cpuinfo)?.[1]?.trim();
  if (arch === "arm64") {
    // /proc/cpuinfo on arm64 has no "cpu family": read the MIDR fields and Features, never fail on family.
    const implementer = field("CPU implementer");
    const part = field("CPU part");
    if (!implementer || !part)
      throw new CpuTemplateError("HOST_READ_FAILED", "/proc/cpuinfo lacks CPU implementer/part");
    return {
      arch,
      vendor: `arm64:0x${Number(implementer).toString(16)}`,
      cpu: { implementer: Number(implementer), part: Number(part) },
      firecrackerVersion: "unknown",
      kernelVersion,
      microcodeVersion: field("CPU revision") ?? "unknown",
      cpuid: new Map(),
      msrs: new Map(),
      registers: new Map(),
      kvmCapabilities: (field("Features") ?? "").split(/\s+/).filter(Boolean),
    };
  }
  if (field("cpu family") === undefined || field("model") === undefined)
    throw new CpuTemplateError("HOST_READ_FAILED", "/proc/cpuinfo lacks cpu family/model on an x86 host");
  let kvm: number;
  try {
    kvm = openSync("/dev/kvm", "r+");
  } catch (cause) {
    throw new CpuTemplateError(
      "HOST_READ_FAILED",
      "cannot open /dev/kvm (KVM is needed to read what guests can be offered)",
      { cause },
    );
  }
  try {
    const cpuid = withNativeMemory(8 + MAX_ENTRIES * 40, (address, view) => {
      view.setUint32(0, MAX_ENTRIES, true);
      const result = libcCall(
        "ioctl",
        DataType.I32,
        [DataType.I32, DataType.I64, DataType.I64],
        [kvm, KVM_GET_SUPPORTED_CPUID, address],
      );
      if (result.value !== 0)
        throw new CpuTemplateError(
          "HOST_READ_FAILED",
          `KVM_GET_SUPPORTED_CPUID failed: errno ${result.errnoCode}`,
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
      const result = libcCall(
        "ioctl",
        DataType.I32,
        [DataType.I32, DataType.I64, DataType.I64],
        [kvm, KVM_GET_MSRS, address],
      );
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
      firecrackerVersion: "unknown",
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
