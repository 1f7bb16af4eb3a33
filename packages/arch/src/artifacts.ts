import { stat } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { type Arch, archSchema } from "./arch.ts";
import { detectBinaryArch } from "./binary-arch.ts";
import { type ChecksumRule, verifyChecksum } from "./checksum.ts";
import { ArchError } from "./errors.ts";

/** Versions and names come from env vars and config files: one path segment each, never `..`. */
export const pathSegmentSchema = z
  .string()
  .min(1)
  .refine((s) => !s.includes("/") && !s.includes("\0") && s !== "." && s !== "..", {
    message: "must be a single path segment (no '/', '.' or '..')",
  });

export const resolveArtifactOptionsSchema = z.object({
  root: z.string().min(1),
  version: pathSegmentSchema,
  name: pathSegmentSchema,
  arch: archSchema,
  verifyArch: z.boolean().default(true),
  checksum: z
    .union([
      z.object({ kind: z.literal("sidecar"), allowUnverified: z.boolean().optional() }),
      z.object({ kind: z.literal("pinned"), sha256: z.string() }),
    ])
    .optional(),
});
/** Where `resolveArtifact` looks (`{root}/{version}/{arch}/{name}`, then the legacy layout) and what it checks. */
export type ResolveArtifactOptions = z.input<typeof resolveArtifactOptionsSchema>;

/** Which layout a resolved artifact was found in: per arch, or the legacy one without an arch level. */
export type ArtifactLayout = "arch" | "legacy";

/** An artifact that passed every check: its path, layout and (with a checksum rule) sha256. */
export interface ResolvedArtifact {
  path: string;
  layout: ArtifactLayout;
  /** Present when a checksum rule was given. */
  sha256?: string;
  checksumVerified?: boolean;
}

/** A path `resolveArtifact` tried and why it was rejected, for the error that lists them. */
export interface RejectedCandidate {
  path: string;
  layout: ArtifactLayout;
  reason: string;
}

/** The paths tried, in order: `{root}/{version}/{arch}/{name}`, then the legacy `{root}/{version}/{name}`. */
export function artifactCandidates(options: {
  root: string;
  version: string;
  name: string;
  arch: Arch;
}): { path: string; layout: ArtifactLayout }[] {
  return [
    { path: join(options.root, options.version, options.arch, options.name), layout: "arch" },
    { path: join(options.root, options.version, options.name), layout: "legacy" },
  ];
}

/**
 * Finds an artifact (kernel, Firecracker, busybox) for `arch`. Falls back to the legacy layout only
 * when the arch path does not exist; a permission error or a file where a directory should be is
 * reported, because silently skipping it could pick a wrong-arch legacy binary.
 */
export async function resolveArtifact(input: ResolveArtifactOptions): Promise<ResolvedArtifact> {
  const parsed = resolveArtifactOptionsSchema.safeParse(input);
  if (!parsed.success) {
    throw new ArchError("INVALID_OPTIONS", `resolveArtifact: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
    });
  }
  const options = parsed.data;
  const rejected: RejectedCandidate[] = [];
  for (const candidate of artifactCandidates(options)) {
    let isFile: boolean;
    try {
      isFile = (await stat(candidate.path)).isFile();
    } catch (cause) {
      const code = (cause as NodeJS.ErrnoException).code;
      if (code === "ENOENT") {
        rejected.push({ ...candidate, reason: "does not exist" });
        continue;
      }
      throw new ArchError(
        "ARTIFACT_UNREADABLE",
        `cannot use ${candidate.path} (${code ?? (cause as Error).message}); fix its permissions or path instead of relying on a fallback`,
        { cause, details: { path: candidate.path, layout: candidate.layout, rejected } },
      );
    }
    if (!isFile) {
      throw new ArchError("ARTIFACT_UNREADABLE", `${candidate.path} exists but is not a regular file`, {
        details: { path: candidate.path, layout: candidate.layout, rejected },
      });
    }
    if (options.verifyArch) await assertArtifactArch(candidate.path, options.arch, candidate.layout);
    const result: ResolvedArtifact = { path: candidate.path, layout: candidate.layout };
    if (options.checksum) {
      const checksum = await verifyChecksum(candidate.path, options.checksum as ChecksumRule);
      result.sha256 = checksum.sha256;
      result.checksumVerified = checksum.verified;
    }
    return result;
  }
  throw new ArchError(
    "ARTIFACT_NOT_FOUND",
    `${options.name} ${options.version} for ${options.arch} not found; tried:\n${rejected
      .map((r) => `  ${r.path} (${r.layout}): ${r.reason}`)
      .join("\n")}\nput it at ${rejected[0]?.path}`,
    { details: { rejected } },
  );
}

async function assertArtifactArch(path: string, arch: Arch, layout: ArtifactLayout): Promise<void> {
  const detected = await detectBinaryArch(path);
  if (detected.arch !== arch) {
    throw new ArchError(
      "ARTIFACT_ARCH_MISMATCH",
      `${path} (${layout} layout) is a ${detected.arch} ${detected.format}, but the target is ${arch}; put a ${arch} build at the arch-specific path`,
      { details: { path, layout, expected: arch, detected } },
    );
  }
}
