// Firecracker's static CPU templates (deprecated since Firecracker 1.5 in favour of custom templates):
// what each is meant for, per Firecracker's docs/cpu_templates/cpu-templates.md. Each has a custom
// equivalent file (custom/<NAME>.json in Firecracker's repository) applied with PUT /cpu-config.
import type { Arch } from "@sbx/arch";
import type { Fingerprint } from "./fingerprint.ts";

export interface StaticTemplate {
  name: "C3" | "T2" | "T2S" | "T2CL" | "T2A" | "V1N1";
  arch: Arch;
  vendor: "Intel" | "AMD" | "ARM";
  /** The CPUs Firecracker says the template is safe on. */
  cpus: readonly CpuName[];
  purpose: string;
  /** File name of its custom-template form in Firecracker's repository. */
  customFile: string;
}

export type CpuName = "Skylake" | "Cascade Lake" | "Ice Lake" | "Milan" | "Neoverse V1" | "Neoverse N1";

export const STATIC_TEMPLATES: readonly StaticTemplate[] = [
  {
    name: "T2CL",
    arch: "amd64",
    vendor: "Intel",
    cpus: ["Cascade Lake", "Ice Lake"],
    purpose: "close to Intel Cascade Lake; with T2A, the same instruction sets across an Intel + AMD fleet",
    customFile: "T2CL.json",
  },
  {
    name: "T2S",
    arch: "amd64",
    vendor: "Intel",
    cpus: ["Skylake", "Cascade Lake"],
    purpose: "moves snapshots between Skylake and Cascade Lake, at a performance cost",
    customFile: "T2S.json",
  },
  {
    name: "T2A",
    arch: "amd64",
    vendor: "AMD",
    cpus: ["Milan"],
    purpose: "AMD Milan; pairs with T2CL for feature parity across vendors",
    customFile: "T2A.json",
  },
  {
    name: "V1N1",
    arch: "arm64",
    vendor: "ARM",
    cpus: ["Neoverse V1", "Neoverse N1"],
    purpose: "presents Neoverse V1 as Neoverse N1",
    customFile: "V1N1.json",
  },
  {
    name: "C3",
    arch: "amd64",
    vendor: "Intel",
    cpus: ["Skylake", "Cascade Lake", "Ice Lake"],
    purpose: "close to AWS C3 instances (no MMIO stale-data mitigation without *_NO bits)",
    customFile: "C3.json",
  },
  {
    name: "T2",
    arch: "amd64",
    vendor: "Intel",
    cpus: ["Skylake", "Cascade Lake", "Ice Lake"],
    purpose: "close to AWS T2 instances",
    customFile: "T2.json",
  },
];

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
