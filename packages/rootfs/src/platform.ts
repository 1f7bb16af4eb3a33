import { ACCEPTED_ARCH_NAMES, type Arch, archTraits, normalizeArch } from "@sbx/arch";
import { RootfsError } from "./errors.ts";
import {
  type Descriptor,
  type ImageConfig,
  type ImageIndex,
  type ImageManifest,
  INDEX_MEDIA_TYPES,
  imageConfigSchema,
  imageIndexSchema,
  imageManifestSchema,
  MANIFEST_MEDIA_TYPES,
  REF_NAME_ANNOTATION,
} from "./oci-schemas.ts";

/** A target platform: an sbx arch (its OCI platform comes from `@sbx/arch`) or an explicit OCI platform. */
export type PlatformSpec = Arch | { os: string; architecture: string; variant?: string | undefined };

/** An OCI platform as os, architecture and variant. */
export interface PlatformTriple {
  os: string;
  architecture: string;
  variant?: string | undefined;
}

export function targetPlatform(platform: PlatformSpec): PlatformTriple {
  if (typeof platform === "string") return { ...archTraits(platform).ociPlatform };
  return platform;
}

/** A platform as `os/architecture[/variant]`. */
export function formatPlatform(platform: PlatformTriple): string {
  return [platform.os, platform.architecture, platform.variant].filter(Boolean).join("/");
}

/** An OCI architecture in @sbx/arch's spelling when it is one of its aliases (x86_64, aarch64, ...). */
function canonicalArchitecture(name: string): string {
  return ACCEPTED_ARCH_NAMES.includes(name) ? normalizeArch(name, { strict: true }) : name;
}

/**
 * How well an image's platform fits the target: 2 exact, 1 compatible, 0 no match. An arm64 entry
 * without a variant is arm64/v8 (the only arm64 variant Firecracker guests run); an amd64 target
 * without a variant accepts `v1` (the baseline) but not v2+ (which need newer CPUs).
 */
export function platformMatchScore(candidate: PlatformTriple, target: PlatformTriple): 0 | 1 | 2 {
  const architecture = canonicalArchitecture(candidate.architecture);
  const targetArchitecture = canonicalArchitecture(target.architecture);
  if (candidate.os !== target.os || architecture !== targetArchitecture) return 0;
  if (architecture === candidate.architecture && (candidate.variant ?? "") === (target.variant ?? ""))
    return 2;
  const defaultVariant = architecture === "arm64" ? "v8" : architecture === "amd64" ? "v1" : "";
  const candidateVariant = candidate.variant || defaultVariant;
  const targetVariant = target.variant || defaultVariant;
  return candidateVariant === targetVariant ? 1 : 0;
}

/** The readable surface platform selection needs (an OciLayout, or a registry). */
export interface ManifestSource {
  readJson<T extends "index" | "manifest" | "config">(
    descriptor: Descriptor,
    kind: T,
  ): Promise<T extends "index" ? ImageIndex : T extends "manifest" ? ImageManifest : ImageConfig>;
}

/** The image chosen for a platform: its manifest and config, with their descriptors. */
export interface SelectedImage {
  manifestDescriptor: Descriptor;
  manifest: ImageManifest;
  configDescriptor: Descriptor;
  config: ImageConfig;
  platform: PlatformTriple;
}

const MAX_INDEX_DEPTH = 8;

interface Candidate {
  descriptor: Descriptor;
  platform: PlatformTriple;
  manifest?: ImageManifest;
  config?: ImageConfig;
}

/**
 * Walk an index (and nested indexes) and pick the manifest for `platform`: exact matches first, then
 * compatible ones (see platformMatchScore), in index order. `tag` restricts the top-level entries to
 * those annotated with that `org.opencontainers.image.ref.name`.
 */
export async function selectImage(
  source: ManifestSource,
  index: ImageIndex,
  platform: PlatformSpec,
  options: { tag?: string | undefined; where: string },
): Promise<SelectedImage> {
  const target = targetPlatform(platform);
  let top = index.manifests;
  if (options.tag !== undefined) {
    top = top.filter((descriptor) => descriptor.annotations?.[REF_NAME_ANNOTATION] === options.tag);
    if (top.length === 0) {
      const tags = index.manifests.map((d) => d.annotations?.[REF_NAME_ANNOTATION]).filter(Boolean);
      throw new RootfsError(
        "PLATFORM_NOT_FOUND",
        `${options.where} has no image tagged ${JSON.stringify(options.tag)}; it has ${tags.length > 0 ? tags.map((t) => JSON.stringify(t)).join(", ") : "no tags"}`,
        { details: { tag: options.tag, tags } },
      );
    }
  }
  const candidates: Candidate[] = [];
  const visited = new Set<string>();
  const walk = async (descriptors: readonly Descriptor[], depth: number): Promise<void> => {
    for (const descriptor of descriptors) {
      if (INDEX_MEDIA_TYPES.includes(descriptor.mediaType)) {
        if (depth >= MAX_INDEX_DEPTH || visited.has(descriptor.digest)) {
          throw new RootfsError(
            "OCI_LAYOUT_INVALID",
            `${options.where}: image indexes nest more than ${MAX_INDEX_DEPTH} deep or form a cycle at ${descriptor.digest}`,
            { details: { digest: descriptor.digest } },
          );
        }
        visited.add(descriptor.digest);
        const nested = await source.readJson(descriptor, "index");
        await walk(nested.manifests, depth + 1);
        continue;
      }
      if (!MANIFEST_MEDIA_TYPES.includes(descriptor.mediaType)) continue; // attestations, artifacts, ...
      if (descriptor.annotations?.["vnd.docker.reference.type"] === "attestation-manifest") continue;
      if (descriptor.platform) {
        candidates.push({ descriptor, platform: descriptor.platform });
        continue;
      }
      // No platform on the descriptor (a single-image layout): the config says what it is.
      const manifest = await source.readJson(descriptor, "manifest");
      const config = await source.readJson(manifest.config, "config");
      candidates.push({ descriptor, platform: config, manifest, config });
    }
  };
  await walk(top, 0);

  let best: Candidate | undefined;
  let bestScore = 0;
  for (const candidate of candidates) {
    const score = platformMatchScore(candidate.platform, target);
    if (score > bestScore) {
      best = candidate;
      bestScore = score;
    }
  }
  if (!best) {
    const available = [...new Set(candidates.map((c) => formatPlatform(c.platform)))];
    throw new RootfsError(
      "PLATFORM_NOT_FOUND",
      `${options.where} has no image for ${formatPlatform(target)}; it has ${available.length > 0 ? available.join(", ") : "no platform images"}. Build or pull the image for ${formatPlatform(target)}, or choose another target arch`,
      { details: { target: formatPlatform(target), available } },
    );
  }
  const manifest = best.manifest ?? (await source.readJson(best.descriptor, "manifest"));
  const config = best.config ?? (await source.readJson(manifest.config, "config"));
  return {
    manifestDescriptor: best.descriptor,
    manifest,
    configDescriptor: manifest.config,
    config,
    platform: {
      os: best.platform.os,
      architecture: best.platform.architecture,
      variant: best.platform.variant,
    },
  };
}

export function schemaFor(kind: "index" | "manifest" | "config") {
  return kind === "index" ? imageIndexSchema : kind === "manifest" ? imageManifestSchema : imageConfigSchema;
}
