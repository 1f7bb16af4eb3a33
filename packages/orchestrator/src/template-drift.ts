import { stat } from "node:fs/promises";
import { join } from "node:path";
import { sha256File } from "@sbx/arch";
import {
  type ArtifactResolver,
  defaultArtifactResolver,
  resolveBootParameters,
  type TemplateSpec,
} from "./boot-parameters.ts";
import type { OrchestratorConfig } from "./config.ts";
import type { BootParameters, TemplateManifest } from "./template-manifest.ts";

export interface Difference {
  /** Dotted path into the boot parameters, e.g. `kernel.sha256`. */
  path: string;
  recorded: unknown;
  current: unknown;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function diffValues(recorded: unknown, current: unknown, path: string, out: Difference[]): void {
  if (isObject(recorded) && isObject(current)) {
    const keys = new Set([...Object.keys(recorded), ...Object.keys(current)]);
    for (const key of [...keys].sort()) {
      diffValues(recorded[key], current[key], path ? `${path}.${key}` : key, out);
    }
    return;
  }
  if (JSON.stringify(recorded) !== JSON.stringify(current)) out.push({ path, recorded, current });
}

/** Every field where the recorded boot parameters differ from the current ones. */
export function diffBootParameters(recorded: BootParameters, current: BootParameters): Difference[] {
  const out: Difference[] = [];
  diffValues(recorded, current, "", out);
  return out;
}

function short(value: unknown): string {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  if (text === undefined) return "(none)";
  return /^[0-9a-f]{64}$/.test(text) ? `${text.slice(0, 12)}…` : text;
}

export function describeDifferences(differences: Difference[]): string {
  return differences.map((d) => `${d.path} changed: ${short(d.recorded)} → ${short(d.current)}`).join("; ");
}

/** Problems with the template's files on disk: missing, resized, or (with `digests`) changed. */
export async function verifyTemplateFiles(
  templateDir: string,
  manifest: TemplateManifest,
  options: { digests?: boolean } = {},
): Promise<string[]> {
  const problems: string[] = [];
  const files = [manifest.rootfs, manifest.snapshot.vmstate, manifest.snapshot.memory];
  for (const file of files) {
    const path = join(templateDir, file.file);
    let size: number;
    try {
      size = (await stat(path)).size;
    } catch {
      problems.push(`${file.file} is missing`);
      continue;
    }
    if (size !== file.sizeBytes) {
      problems.push(`${file.file} is ${size} bytes, template.json says ${file.sizeBytes}`);
    } else if (options.digests && (await sha256File(path)) !== file.sha256) {
      problems.push(`${file.file} does not match its recorded sha256`);
    }
  }
  return problems;
}

export interface TemplateDriftOptions {
  /** The spec the template would be built from now (OCI digest, sizes, scripts). */
  spec: TemplateSpec;
  resolver?: ArtifactResolver;
  /** Also check the template's files here (sizes; sha256 with `verifyDigests`). */
  templateDir?: string;
  verifyDigests?: boolean;
}

/**
 * Why a template is stale, or null when it is current: recomputes the boot parameters with
 * `resolveBootParameters` (the function the build used) and compares them with template.json.
 */
export async function templateDriftReason(
  template: TemplateManifest,
  config: OrchestratorConfig,
  options: TemplateDriftOptions,
): Promise<string | null> {
  const current = await resolveBootParameters(
    config,
    options.spec,
    options.resolver ?? defaultArtifactResolver,
  );
  const reasons: string[] = [];
  const differences = diffBootParameters(template.boot, current);
  if (differences.length > 0) reasons.push(describeDifferences(differences));
  if (options.templateDir !== undefined) {
    reasons.push(
      ...(await verifyTemplateFiles(options.templateDir, template, {
        digests: options.verifyDigests ?? false,
      })),
    );
  }
  return reasons.length === 0 ? null : `template "${template.name}" is stale: ${reasons.join("; ")}`;
}
