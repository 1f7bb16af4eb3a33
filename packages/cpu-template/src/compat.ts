// Can a snapshot made on `source` with `template` resume on `target`? The guest keeps the CPU features
// it saw on `source`; any it may use that `target` lacks is a SIGILL waiting to happen.
import { parseKernelRelease } from "@sbx/arch";
import { applyTemplate } from "./apply.ts";
import {
  ARCH_CAPABILITIES_NO_BITS,
  ARM64_FIELD_NAMES,
  ARM64_ID_REGISTERS,
  IA32_ARCH_CAPABILITIES,
  X86_FEATURE_REGISTERS,
} from "./features.ts";
import { cpuidKey, type Fingerprint } from "./fingerprint.ts";
import type { CustomCpuTemplate } from "./schema.ts";
import { assertSnapshotLoadable } from "./snapshot-version.ts";

/** A CPU feature the guest sees on the source host that the target host lacks, and where it lives. */
export interface MissingFeature {
  name: string;
  /** x86: cpuid leaf/subleaf/register/bit; arm64: ID register and field offset. */
  where: string;
}

/** Whether a snapshot made on one host can resume on another, feature by feature. */
export interface CompatibilityVerdict {
  compatible: boolean;
  /** Features the guest can see on the source that the target lacks. */
  missing: MissingFeature[];
  /** Other reasons Firecracker documents (vendor, snapshot format version, kernel direction). */
  reasons: string[];
  /** What a "compatible" verdict means and does not. */
  scope: string;
}

const ID_AA64PFR0_EL1 = "0x603000000013c020";

const SCOPE =
  "CPUID-level: the guest is not told about a feature the target lacks; a guest that executes a masked instruction the source CPU has can still fault after the move";

/** Can a snapshot made on `source` with `template` resume on `target`: the features the guest would lose. */
export function checkCompatibility(options: {
  source: Fingerprint;
  target: Fingerprint;
  template?: CustomCpuTemplate;
}): CompatibilityVerdict {
  const { source, target } = options;
  const guest = applyTemplate(source, options.template);
  const onTarget = applyTemplate(target, options.template);
  const missing: MissingFeature[] = [];
  const reasons: string[] = [];
  if (source.arch !== target.arch) reasons.push(`different architectures (${source.arch} → ${target.arch})`);
  else if (source.vendor !== target.vendor)
    reasons.push(`different CPU vendors (${source.vendor} → ${target.vendor}): no template bridges them`);
  // "unknown" (a fingerprint that was not told its Firecracker) is left to the caller's own
  // assertSnapshotLoadable with the running version; two known versions are checked here.
  if (source.firecrackerVersion !== "unknown" && target.firecrackerVersion !== "unknown") {
    try {
      assertSnapshotLoadable({
        snapshotFirecrackerVersion: source.firecrackerVersion,
        runningFirecrackerVersion: target.firecrackerVersion,
      });
    } catch (error) {
      reasons.push(`snapshot format: ${(error as Error).message}`);
    }
  }
  try {
    const a = parseKernelRelease(source.kernelVersion);
    const b = parseKernelRelease(target.kernelVersion);
    if (a.major * 1000 + a.minor > b.major * 1000 + b.minor)
      reasons.push(
        `host kernel ${a.major}.${a.minor} → ${b.major}.${b.minor}: Firecracker supports restoring on the same or a newer kernel only`,
      );
  } catch {
    reasons.push("a host kernel version could not be read");
  }
  if (reasons.some((r) => r.startsWith("different")))
    return { compatible: false, missing, reasons, scope: SCOPE };
  if (source.arch === "arm64") {
    // The vGIC's saved state only restores onto the same GIC version, whatever the CPU template says.
    const gic = (f: Fingerprint) => {
      const pfr0 = f.registers.get(ID_AA64PFR0_EL1);
      return pfr0 === undefined ? undefined : fieldValue(pfr0, 24, false);
    };
    const [from, to] = [gic(source), gic(target)];
    if (from !== undefined && to !== undefined && from !== to)
      reasons.push(
        `arm64 GIC version differs (ID_AA64PFR0_EL1.GIC ${from} → ${to}): Firecracker restores the vGIC state only onto the same GIC version`,
      );
  }

  if (source.arch === "amd64") {
    for (const reg of X86_FEATURE_REGISTERS) {
      const key = cpuidKey(reg.leaf, reg.subleaf);
      const index = { eax: 0, ebx: 1, ecx: 2, edx: 3 }[reg.register];
      const seen = (guest.cpuid.get(key)?.[index] ?? 0) >>> 0;
      const has = (onTarget.cpuid.get(key)?.[index] ?? 0) >>> 0;
      const lacking = (seen & ~has) >>> 0;
      for (let bit = 0; bit < 32; bit++)
        if (lacking & (1 << bit))
          missing.push({
            name:
              reg.bits[bit] ?? `cpuid 0x${reg.leaf.toString(16)}.${reg.subleaf} ${reg.register} bit ${bit}`,
            where: `leaf 0x${reg.leaf.toString(16)} subleaf ${reg.subleaf} ${reg.register} bit ${bit}`,
          });
    }
    const seenCaps = guest.msrs.get(IA32_ARCH_CAPABILITIES) ?? 0n;
    const hasCaps = onTarget.msrs.get(IA32_ARCH_CAPABILITIES) ?? 0n;
    for (const [bit, name] of Object.entries(ARCH_CAPABILITIES_NO_BITS))
      if (seenCaps & (1n << BigInt(bit)) && !(hasCaps & (1n << BigInt(bit))))
        missing.push({ name, where: `IA32_ARCH_CAPABILITIES bit ${bit}` });
  } else {
    for (const [id, { name, signedFields }] of Object.entries(ARM64_ID_REGISTERS)) {
      const seen = guest.registers.get(id);
      const has = onTarget.registers.get(id);
      if (seen === undefined || has === undefined) continue;
      for (let field = 0; field < 64; field += 4) {
        const a = fieldValue(seen, field, signedFields.includes(field));
        const b = fieldValue(has, field, signedFields.includes(field));
        if (a > b)
          missing.push({
            name: ARM64_FIELD_NAMES[name]?.[field] ?? `${name}[${field + 3}:${field}]`,
            where: `${name} bits ${field + 3}:${field} (${a} > ${b})`,
          });
      }
    }
  }
  return { compatible: missing.length === 0 && reasons.length === 0, missing, reasons, scope: SCOPE };
}

/** A 4-bit ID register field; signed fields use 0xf for "not implemented" (-1). */
export function fieldValue(register: bigint, offset: number, signed: boolean): number {
  const value = Number((register >> BigInt(offset)) & 0xfn);
  return signed && value === 0xf ? -1 : value;
}
