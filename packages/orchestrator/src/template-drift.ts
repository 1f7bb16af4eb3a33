import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { sha256File } from "@sbx/arch";
import { decodeMemoryHeader } from "@sbx/uffd";
import {
  type ArtifactResolver,
  defaultArtifactResolver,
  resolveBootParameters,
  type TemplateSpec,
} from "./boot-parameters.ts";
import { memoryDigest } from "./builds.ts";
import type { OrchestratorConfig } from "./config.ts";
import { type BootParameters, BUILD_FILES, type BuildManifest } from "./template-manifest.ts";

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

/** A file's digest as build.json records it: the memory file's over the pages its header gives the build. */
async function digestOf(
  buildDir: string,
  manifest: BuildManifest,
  name: string,
): Promise<string | undefined> {
  const path = join(buildDir, name);
  if (name !== BUILD_FILES.memory) return sha256File(path);
  try {
    const header = decodeMemoryHeader(await readFile(join(buildDir, BUILD_FILES.header)));
    return await memoryDigest(path, header, manifest.id);
  } catch {
    return undefined;
  }
}

/** Problems with a build's files on disk: missing, resized, or (with `digests`) changed. */
export async function verifyTemplateFiles(
  buildDir: string,
  manifest: BuildManifest,
  options: { digests?: boolean } = {},
): Promise<string[]> {
  const problems: string[] = [];
  for (const [name, file] of Object.entries(manifest.files)) {
    if (!file) continue;
    const path = join(buildDir, name);
    let size: number;
    try {
      size = (await stat(path)).size;
    } catch {
      problems.push(`${name} is missing`);
      continue;
    }
    if (size !== file.sizeBytes) {
      problems.push(`${name} is ${size} bytes, build.json says ${file.sizeBytes}`);
    } else if (options.digests && (await digestOf(buildDir, manifest, name)) !== file.sha256) {
      problems.push(`${name} does not match its recorded sha256`);
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
  template: BuildManifest,
  config: OrchestratorConfig,
  options: TemplateDriftOptions,
): Promise<string | null> {
  const current = await resolveBootParameters(
    config,
    options.spec,
    options.resolver ?? defaultArtifactResolver,
  );
  const reasons: string[] = [];
  if (!template.boot) return `build ${template.id} was not built from an image`;
  const differences = diffBootParameters(template.boot, current);
  if (differences.length > 0) reasons.push(describeDifferences(differences));
  if (options.templateDir !== undefined) {
    reasons.push(
      ...(await verifyTemplateFiles(options.templateDir, template, {
        digests: options.verifyDigests ?? false,
      })),
    );
  }
  return reasons.length === 0 ? null : `template "${template.template}" is stale: ${reasons.join("; ")}`;
}
