import { applyBitmap, parseBitmap } from "./bitmap.ts";
import { cpuidKey, type Fingerprint } from "./fingerprint.ts";
import type { CustomCpuTemplate } from "./schema.ts";

const INDEX = { eax: 0, ebx: 1, ecx: 2, edx: 3 } as const;

/** What a guest sees on this host with `template` applied (cpuid, MSRs and registers). */
export function applyTemplate(host: Fingerprint, template: CustomCpuTemplate | undefined): Fingerprint {
  if (!template) return host;
  const cpuid = new Map(host.cpuid);
  for (const leaf of template.cpuid_modifiers ?? []) {
    const key = cpuidKey(Number(leaf.leaf), Number(leaf.subleaf));
    const regs = [...(cpuid.get(key) ?? [0, 0, 0, 0])] as [number, number, number, number];
    for (const m of leaf.modifiers)
      regs[INDEX[m.register]] = Number(
        applyBitmap(parseBitmap(m.bitmap, 32), BigInt(regs[INDEX[m.register]] >>> 0)),
      );
    cpuid.set(key, regs);
  }
  const msrs = new Map(host.msrs);
  for (const msr of template.msr_modifiers ?? [])
    msrs.set(Number(msr.addr), applyBitmap(parseBitmap(msr.bitmap, 64), msrs.get(Number(msr.addr)) ?? 0n));
  const registers = new Map(host.registers);
  for (const reg of template.reg_modifiers ?? []) {
    const id = `0x${BigInt(reg.addr).toString(16)}`;
    registers.set(id, applyBitmap(parseBitmap(reg.bitmap, 128), registers.get(id) ?? 0n));
  }
  return { ...host, cpuid, msrs, registers };
}
