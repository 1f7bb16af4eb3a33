// Firecracker's static CPU templates (deprecated since Firecracker 1.5 in favour of custom templates):
// what each is meant for, per Firecracker's docs/cpu_templates/cpu-templates.md. Each has a custom
// equivalent file (custom/<NAME>.json in Firecracker's repository) applied with PUT /cpu-config.
import { type Arch, type StaticCpuTemplateName, staticCpuTemplateArch } from "@sbx/arch";
import type { Fingerprint } from "./fingerprint.ts";

/** One of Firecracker's static CPU templates: its arch, vendor, the CPUs it suits and its custom form. */
export interface StaticTemplate {
  name: StaticCpuTemplateName;
  arch: Arch;
  vendor: "Intel" | "AMD" | "ARM";
  /** The CPUs Firecracker says the template is safe on. */
  cpus: readonly CpuName[];
  purpose: string;
  /** File name of its custom-template form in Firecracker's repository. */
  customFile: string;
}

/** The CPUs the static templates are described in terms of. */
export type CpuName = "Skylake" | "Cascade Lake" | "Ice Lake" | "Milan" | "Neoverse V1" | "Neoverse N1";

// Keyed by every name @sbx/arch lists, so a name added there fails to compile here until it is described.
// The order is the catalog's (recommendTemplate prefers the earlier ones); the arch comes from @sbx/arch.
const DESCRIPTIONS: Record<StaticCpuTemplateName, Pick<StaticTemplate, "vendor" | "cpus" | "purpose">> = {
  T2CL: {
    vendor: "Intel",
    cpus: ["Cascade Lake", "Ice Lake"],
    purpose: "close to Intel Cascade Lake; with T2A, the same instruction sets across an Intel + AMD fleet",
  },
  T2S: {
    vendor: "Intel",
    cpus: ["Skylake", "Cascade Lake"],
    purpose: "moves snapshots between Skylake and Cascade Lake, at a performance cost",
  },
  T2A: {
    vendor: "AMD",
    cpus: ["Milan"],
    purpose: "AMD Milan; pairs with T2CL for feature parity across vendors",
  },
  V1N1: {
    vendor: "ARM",
    cpus: ["Neoverse V1", "Neoverse N1"],
    purpose: "presents Neoverse V1 as Neoverse N1",
  },
  C3: {
    vendor: "Intel",
    cpus: ["Skylake", "Cascade Lake", "Ice Lake"],
    purpose: "close to AWS C3 instances (no MMIO stale-data mitigation without *_NO bits)",
  },
  T2: {
    vendor: "Intel",
    cpus: ["Skylake", "Cascade Lake", "Ice Lake"],
    purpose: "close to AWS T2 instances",
  },
};

/** Every static template, described; names and arches are @sbx/arch's. */
export const STATIC_TEMPLATES: readonly StaticTemplate[] = Object.freeze(
  (Object.keys(DESCRIPTIONS) as StaticCpuTemplateName[]).map((name) =>
    Object.freeze({
      name,
      arch: staticCpuTemplateArch(name),
      ...DESCRIPTIONS[name],
      customFile: `${name}.json`,
    }),
  ),
);

/** The catalog entry of a static template name (exact spelling), or undefined. */
export function staticTemplate(name: string): StaticTemplate | undefined {
  return STATIC_TEMPLATES.find((t) => t.name === name);
}

/** The CPU a fingerprint is, when it is one the catalog knows. */
export function cpuName(f: Fingerprint): CpuName | undefined {
  const { family, model, stepping, part } = f.cpu;
  if (f.vendor === "GenuineIntel" && family === 6) {
    if (model === 0x55) return (stepping ?? 0) >= 5 ? "Cascade Lake" : "Skylake";
    if (model === 0x6a || model === 0x6c) return "Ice Lake";
  }
  if (f.vendor === "AuthenticAMD" && family === 0x19 && model !== undefined && model <= 0x0f) return "Milan";
  if (part === 0xd40) return "Neoverse V1";
  if (part === 0xd0c) return "Neoverse N1";
  return undefined;
}
