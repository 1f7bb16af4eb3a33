// Host CPU fingerprints in the format of Firecracker's cpu-template-helper (`fingerprint dump`): the
// guest CPU configuration KVM offers on that host, plus kernel, microcode and Firecracker versions.
import { readFileSync } from "node:fs";
import { z } from "zod";
import { bitmapValue } from "./bitmap.ts";
import { CpuTemplateError } from "./errors.ts";
import { customCpuTemplateSchema } from "./schema.ts";

/** The JSON of Firecracker's CPU fingerprint file (its `cpu-template-helper fingerprint dump`). */
export const fingerprintFileSchema = z.looseObject({
  firecracker_version: z.string(),
  kernel_version: z.string(),
  microcode_version: z.string(),
  bios_version: z.string().optional(),
  bios_revision: z.string().optional(),
  guest_cpu_config: customCpuTemplateSchema,
});

export type CpuidKey = `${number}.${number}`;

/** A host CPU: arch, vendor, family/model (or MIDR), and its feature registers. */
export interface Fingerprint {
  arch: "amd64" | "arm64";
  /** "GenuineIntel", "AuthenticAMD", or "arm64:0x41" (MIDR implementer). */
  vendor: string;
  /** x86: family/model/stepping from leaf 1; arm64: MIDR fields when the fingerprint carries MIDR. */
  cpu: { family?: number; model?: number; stepping?: number; implementer?: number; part?: number };
  firecrackerVersion: string;
  kernelVersion: string;
  microcodeVersion: string;
  /** leaf.subleaf → [eax, ebx, ecx, edx] */
  cpuid: Map<CpuidKey, [number, number, number, number]>;
  msrs: Map<number, bigint>;
  /** arm64 registers by KVM id (lowercase hex) */
  registers: Map<string, bigint>;
  kvmCapabilities: string[];
}

export const cpuidKey = (leaf: number, subleaf: number): CpuidKey => `${leaf}.${subleaf}`;
const REGISTER_INDEX = { eax: 0, ebx: 1, ecx: 2, edx: 3 } as const;

/** A fingerprint file's JSON as a `Fingerprint` (INVALID_FINGERPRINT when it is not one). */
export function parseFingerprint(json: unknown, source = "fingerprint"): Fingerprint {
  const parsed = fingerprintFileSchema.safeParse(json);
  if (!parsed.success)
    throw new CpuTemplateError("INVALID_FINGERPRINT", `${source}: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
    });
  const f = parsed.data;
  const config = f.guest_cpu_config;
  const cpuid = new Map<CpuidKey, [number, number, number, number]>();
  for (const leaf of config.cpuid_modifiers ?? []) {
    const regs: [number, number, number, number] = [0, 0, 0, 0];
    for (const m of leaf.modifiers) regs[REGISTER_INDEX[m.register]] = Number(bitmapValue(m.bitmap));
    cpuid.set(cpuidKey(Number(leaf.leaf), Number(leaf.subleaf)), regs);
  }
  const msrs = new Map<number, bigint>();
  for (const msr of config.msr_modifiers ?? []) msrs.set(Number(msr.addr), bitmapValue(msr.bitmap));
  const registers = new Map<string, bigint>();
  for (const reg of config.reg_modifiers ?? [])
    registers.set(`0x${BigInt(reg.addr).toString(16)}`, bitmapValue(reg.bitmap));
  const arch = cpuid.size > 0 ? "amd64" : registers.size > 0 ? "arm64" : undefined;
  if (!arch)
    throw new CpuTemplateError("INVALID_FINGERPRINT", `${source}: neither cpuid leaves nor arm64 registers`);
  let vendor: string;
  const cpu: Fingerprint["cpu"] = {};
  if (arch === "amd64") {
    const leaf0 = cpuid.get(cpuidKey(0, 0));
    const leaf1 = cpuid.get(cpuidKey(1, 0));
    if (!leaf0 || !leaf1)
      throw new CpuTemplateError(
        "INVALID_FINGERPRINT",
        `${source}: cpuid leaves 0 and 1 are required on x86`,
      );
    vendor = vendorString(leaf0[1], leaf0[3], leaf0[2]);
    Object.assign(cpu, familyModelStepping(leaf1[0]));
  } else {
    // MIDR_EL1 (KVM id 0x603000000013c000) when the dump has it; the implementer otherwise stays unknown.
    const midr = registers.get("0x603000000013c000");
    if (midr !== undefined) {
      cpu.implementer = Number((midr >> 24n) & 0xffn);
      cpu.part = Number((midr >> 4n) & 0xfffn);
    }
    vendor = `arm64:${cpu.implementer === undefined ? "unknown" : `0x${cpu.implementer.toString(16)}`}`;
  }
  return {
    arch,
    vendor,
    cpu,
    firecrackerVersion: f.firecracker_version,
    kernelVersion: f.kernel_version,
    microcodeVersion: f.microcode_version,
    cpuid,
    msrs,
    registers,
    kvmCapabilities: config.kvm_capabilities ?? [],
  };
}

/** A fingerprint file as Firecracker writes it. */
export type FingerprintFile = z.infer<typeof fingerprintFileSchema>;

const hex = (value: number | bigint) => `0x${value.toString(16)}`;
const bits = (value: number | bigint, width: number) => `0b${BigInt(value).toString(2).padStart(width, "0")}`;

/**
 * The inverse of `parseFingerprint`: Firecracker's fingerprint format, e.g. to store the build host's
 * fingerprint in a template's metadata. Only numeric KVM capabilities survive (the format's rule).
 */
export function fingerprintToFile(f: Fingerprint): FingerprintFile {
  const registers = ["eax", "ebx", "ecx", "edx"] as const;
  const capabilities = f.kvmCapabilities.filter((c) => /^!?\d+$/.test(c));
  const guest =
    f.arch === "amd64"
      ? {
          kvm_capabilities: capabilities,
          cpuid_modifiers: [...f.cpuid].map(([key, regs]) => {
            const [leaf, subleaf] = key.split(".").map(Number) as [number, number];
            return {
              leaf: hex(leaf),
              subleaf: hex(subleaf),
              flags: 0,
              modifiers: registers.map((register, i) => ({
                register,
                bitmap: bits(regs[i as 0 | 1 | 2 | 3] >>> 0, 32),
              })),
            };
          }),
          msr_modifiers: [...f.msrs].map(([addr, value]) => ({ addr: hex(addr), bitmap: bits(value, 64) })),
        }
      : {
          kvm_capabilities: capabilities,
          vcpu_features: [],
          // Firecracker writes every arm64 register as 128 bits, whatever its KVM size.
          reg_modifiers: [...f.registers].map(([addr, value]) => ({ addr, bitmap: bits(value, 128) })),
        };
  return fingerprintFileSchema.parse({
    firecracker_version: f.firecrackerVersion,
    kernel_version: f.kernelVersion,
    microcode_version: f.microcodeVersion,
    guest_cpu_config: guest,
  });
}

/** Reads and parses a fingerprint file. */
export function readFingerprintFile(path: string): Fingerprint {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, "utf8"));
  } catch (cause) {
    throw new CpuTemplateError("INVALID_FINGERPRINT", `cannot read ${path} as JSON`, { cause });
  }
  return parseFingerprint(json, path);
}

export function vendorString(ebx: number, edx: number, ecx: number): string {
  const b = Buffer.alloc(12);
  b.writeUInt32LE(ebx >>> 0, 0);
  b.writeUInt32LE(edx >>> 0, 4);
  b.writeUInt32LE(ecx >>> 0, 8);
  return b.toString("latin1");
}

/** Family/model as software reads them: extended fields added for family 0xf (and 0x6 for the model). */
export function familyModelStepping(eax: number): { family: number; model: number; stepping: number } {
  const stepping = eax & 0xf;
  const baseModel = (eax >>> 4) & 0xf;
  const baseFamily = (eax >>> 8) & 0xf;
  const extModel = (eax >>> 16) & 0xf;
  const extFamily = (eax >>> 20) & 0xff;
  const family = baseFamily === 0xf ? baseFamily + extFamily : baseFamily;
  const model = baseFamily === 0x6 || baseFamily === 0xf ? (extModel << 4) + baseModel : baseModel;
  return { family, model, stepping };
}
