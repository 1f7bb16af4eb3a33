// One template for a fleet: the guest sees only what every host can execute.
import { parseKernelRelease } from "@sbx/arch";
import { serializeBitmap } from "./bitmap.ts";
import { checkCompatibility, fieldValue } from "./compat.ts";
import { CpuTemplateError } from "./errors.ts";
import {
  ARCH_CAPABILITIES_NO_BITS,
  ARM64_ID_REGISTERS,
  IA32_ARCH_CAPABILITIES,
  X86_FEATURE_REGISTERS,
} from "./features.ts";
import { cpuidKey, type Fingerprint } from "./fingerprint.ts";
import type { CustomCpuTemplate } from "./schema.ts";

/** Kernel where KVM lets userspace lower arm64 ID register fields (writable ID registers). */
const ARM64_WRITABLE_ID_REGS = { major: 6, minor: 7 };

/** The custom template for a fleet: the guest sees only the CPU features every host has. */
export function normalizeFleet(fingerprints: readonly Fingerprint[]): CustomCpuTemplate {
  if (fingerprints.length === 0) throw new CpuTemplateError("MIXED_FLEET", "no fingerprints given");
  const first = fingerprints[0] as Fingerprint;
  const arches = new Set(fingerprints.map((f) => f.arch));
  if (arches.size > 1)
    throw new CpuTemplateError(
      "MIXED_FLEET",
      `the fleet mixes architectures (${[...arches].join(", ")}): no template bridges them`,
    );
  const vendors = new Set(fingerprints.map((f) => f.vendor));
  if (vendors.size > 1)
    throw new CpuTemplateError(
      "MIXED_FLEET",
      `the fleet mixes CPU vendors (${[...vendors].join(", ")}): snapshots do not move between vendors, so no template bridges them; keep one template per vendor pool`,
    );
  const template = first.arch === "amd64" ? normalizeX86(fingerprints) : normalizeArm64(fingerprints);
  // Check the result, not just the recipe: applied on every host, the guest must see the same features,
  // and no move inside the fleet may take one away.
  for (const source of fingerprints)
    for (const target of fingerprints) {
      const verdict = checkCompatibility({ source, target, template });
      if (verdict.missing.length > 0)
        throw new CpuTemplateError(
          "MIXED_FLEET",
          `the normalized template still lets ${verdict.missing.map((m) => m.name).join(", ")} differ between hosts`,
        );
    }
  return template;
}

function normalizeX86(fleet: readonly Fingerprint[]): CustomCpuTemplate {
  const cpuid_modifiers: NonNullable<CustomCpuTemplate["cpuid_modifiers"]> = [];
  const byLeaf = new Map<
    string,
    {
      leaf: number;
      subleaf: number;
      modifiers: { register: "eax" | "ebx" | "ecx" | "edx"; bitmap: string }[];
    }
  >();
  for (const reg of X86_FEATURE_REGISTERS) {
    const index = { eax: 0, ebx: 1, ecx: 2, edx: 3 }[reg.register];
    const values = fleet.map((f) => (f.cpuid.get(cpuidKey(reg.leaf, reg.subleaf))?.[index] ?? 0) >>> 0);
    const all = values.reduce((a, b) => (a & b) >>> 0, 0xffffffff);
    const any = values.reduce((a, b) => (a | b) >>> 0, 0);
    const clear = (any & ~all) >>> 0; // some host has it, not every host: hide it
    if (clear === 0) continue;
    const key = `${reg.leaf}.${reg.subleaf}`;
    const entry = byLeaf.get(key) ?? { leaf: reg.leaf, subleaf: reg.subleaf, modifiers: [] };
    entry.modifiers.push({
      register: reg.register,
      bitmap: serializeBitmap({ width: 32, mask: BigInt(clear), value: 0n }),
    });
    byLeaf.set(key, entry);
  }
  for (const { leaf, subleaf, modifiers } of byLeaf.values())
    cpuid_modifiers.push({
      leaf: `0x${leaf.toString(16)}`,
      subleaf: `0x${subleaf.toString(16)}`,
      // KVM_CPUID_FLAG_SIGNIFCANT_INDEX for leaves whose subleaf matters (7, 0xd).
      flags: leaf === 0x7 || leaf === 0xd ? 1 : 0,
      modifiers,
    });
  const template: CustomCpuTemplate = { cpuid_modifiers };
  // Never claim a mitigation the hardware lacks: AND the *_NO bits of IA32_ARCH_CAPABILITIES. A host
  // whose fingerprint has no such MSR claims none of them (AMD fingerprints often omit it while KVM on
  // an AMD host still emulates it), so the hosts that do claim some must hide them too.
  const caps = fleet.map((f) => f.msrs.get(IA32_ARCH_CAPABILITIES) ?? 0n);
  let mask = 0n;
  for (const bit of Object.keys(ARCH_CAPABILITIES_NO_BITS).map(BigInt)) {
    const someHave = caps.some((c) => c & (1n << bit));
    const allHave = caps.every((c) => c & (1n << bit));
    if (someHave && !allHave) mask |= 1n << bit;
  }
  if (mask)
    template.msr_modifiers = [
      {
        addr: `0x${IA32_ARCH_CAPABILITIES.toString(16)}`,
        bitmap: serializeBitmap({ width: 64, mask, value: 0n }),
      },
    ];
  return template;
}

function normalizeArm64(fleet: readonly Fingerprint[]): CustomCpuTemplate {
  const reg_modifiers: NonNullable<CustomCpuTemplate["reg_modifiers"]> = [];
  for (const [id, { name, signedFields }] of Object.entries(ARM64_ID_REGISTERS)) {
    const values = fleet.map((f) => f.registers.get(id));
    if (values.some((v) => v === undefined)) continue;
    let mask = 0n;
    let value = 0n;
    for (let field = 0; field < 64; field += 4) {
      const signed = signedFields.includes(field);
      const fields = (values as bigint[]).map((v) => fieldValue(v, field, signed));
      const min = Math.min(...fields);
      if (fields.every((f) => f === min)) continue;
      mask |= 0xfn << BigInt(field);
      value |= BigInt(min === -1 ? 0xf : min) << BigInt(field);
    }
    if (mask === 0n) continue;
    const old = fleet.find((f) => {
      const k = parseKernelRelease(f.kernelVersion);
      return k.major * 1000 + k.minor < ARM64_WRITABLE_ID_REGS.major * 1000 + ARM64_WRITABLE_ID_REGS.minor;
    });
    if (old)
      throw new CpuTemplateError(
        "ID_REGISTERS_NOT_WRITABLE",
        `the fleet differs in ${name}, and masking it needs writable ID registers (kernel ${ARM64_WRITABLE_ID_REGS.major}.${ARM64_WRITABLE_ID_REGS.minor}+); host kernel ${old.kernelVersion} has none. Upgrade those hosts or split the pool (the guest kernel options arm64.nosve / arm64.nosme hide SVE/SME at a cost: NEON fallbacks)`,
      );
    reg_modifiers.push({ addr: id, bitmap: serializeBitmap({ width: 64, mask, value }) });
  }
  // SVE and PAC are opt-in vcpu_features in Firecracker: never enabled here.
  return { reg_modifiers };
}
