import { type Arch, isStaticCpuTemplateName, staticCpuTemplateArch } from "@sbx/arch";
import type { OperationId } from "./operations.ts";

/**
 * Why Firecracker on `arch` would refuse this call, or undefined when it would not. Firecracker checks
 * these itself, but only after the VM is half configured; refusing here names the rule and the arch.
 */
export function archRefusal(arch: Arch, operation: OperationId, body: unknown): string | undefined {
  const b = (body ?? {}) as Record<string, unknown>;
  const set = (field: string) => b[field] !== undefined && b[field] !== null;
  if (arch === "arm64") {
    if (operation === "createSyncAction" && b.action_type === "SendCtrlAltDel")
      return "SendCtrlAltDel exists on x86_64 only (aarch64 guests have no i8042 controller); stop the VM with SIGTERM";
    if (
      (operation === "putMachineConfiguration" || operation === "patchMachineConfiguration") &&
      b.smt === true
    )
      return "smt: true is x86_64 only; Firecracker rejects SMT on aarch64";
    if (operation === "loadSnapshot" && b.clock_realtime === true) return "clock_realtime is x86_64 only";
    if (operation === "putCpuConfiguration" && (set("cpuid_modifiers") || set("msr_modifiers")))
      return "cpuid_modifiers and msr_modifiers are x86_64 CPU template fields; aarch64 takes reg_modifiers and vcpu_features";
  } else {
    if (operation === "putCpuConfiguration" && (set("reg_modifiers") || set("vcpu_features")))
      return "reg_modifiers and vcpu_features are aarch64 CPU template fields; x86_64 takes cpuid_modifiers and msr_modifiers";
  }
  if (operation === "putMachineConfiguration" || operation === "patchMachineConfiguration") {
    const template = b.cpu_template;
    if (isStaticCpuTemplateName(template) && staticCpuTemplateArch(template) !== arch)
      return `static CPU template ${template} is for ${arch === "arm64" ? "x86_64" : "aarch64"} hosts`;
  }
  return undefined;
}
