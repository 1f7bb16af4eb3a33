import { cpuName, STATIC_TEMPLATES, type StaticTemplate } from "./catalog.ts";
import type { Fingerprint } from "./fingerprint.ts";
import { normalizeFleet } from "./normalize.ts";
import type { CustomCpuTemplate } from "./schema.ts";

/** The template `recommendTemplate` suggests for a fleet: a static one that covers it, or a normalized custom one. */
export type Recommendation =
  | { kind: "static"; template: StaticTemplate; why: string }
  | { kind: "custom"; template: CustomCpuTemplate; why: string };

/** The static template that covers the whole fleet when one does, else the normalized custom template. */
export function recommendTemplate(fingerprints: readonly Fingerprint[]): Recommendation {
  const names = fingerprints.map(cpuName);
  if (names.every((n) => n !== undefined)) {
    const fleet = new Set(names);
    const covering = STATIC_TEMPLATES.slice(0, 4).find((t) => [...fleet].every((n) => t.cpus.includes(n)));
    if (covering)
      return {
        kind: "static",
        template: covering,
        why: `${[...fleet].join(" + ")}: ${covering.name} is safe on ${covering.cpus.join(", ")}`,
      };
  }
  return {
    kind: "custom",
    template: normalizeFleet(fingerprints),
    why: "no static template covers every CPU of the fleet: a custom template exposing only what every host has",
  };
}
