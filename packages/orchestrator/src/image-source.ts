// What `sbx template build <image>` builds from: an OCI layout directory as given, or an image
// reference pulled (with Docker's credentials) into a per-reference layout under the state directory.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { type Arch, type Logger, normalizeArch } from "@sbx/arch";
import {
  type ImageReference,
  type PlatformSpec,
  type PullImageResult,
  parseImageReference,
  pullImage,
  type RegistryAuth,
} from "@sbx/rootfs";
import { OrchestratorError } from "./errors.ts";
import type { ProgressEvent } from "./progress.ts";

/**
 * A directory that exists, or anything spelled like a path (`/…`, `./…`, `../…`, `~…`), is a
 * layout; otherwise a valid image reference is one. So `alpine` is pulled unless `./alpine` exists.
 */
export function isImageReference(input: string): boolean {
  if (/^(\/|\.\.?(\/|$)|~)/.test(input) || existsSync(input)) return false;
  try {
    parseImageReference(input);
    return true;
  } catch {
    return false;
  }
}

/**
 * `linux/arm64/v8` (or just `arm64`) → a platform for the pull and the unpack. Its architecture must
 * be the target's: a template boots on the target arch only.
 */
export function parsePlatformOverride(text: string, targetArch: Arch): PlatformSpec {
  const parts = text.trim().split("/");
  const [os, architecture, variant] = parts.length === 1 ? ["linux", parts[0], undefined] : parts;
  if (!os || !architecture || parts.length > 3) {
    throw new OrchestratorError(
      "INVALID_OPTIONS",
      `--platform ${JSON.stringify(text)} is not os/arch[/variant], e.g. linux/arm64/v8`,
      {
        details: { platform: text },
      },
    );
  }
  const arch = normalizeArch(architecture, { strict: true });
  if (arch !== targetArch) {
    throw new OrchestratorError(
      "ARCH_MISMATCH",
      `--platform ${text} is for ${arch}, but the target arch is ${targetArch}; set TARGET_ARCH=${arch} to build for it`,
      { details: { platform: text, targetArch } },
    );
  }
  return { os, architecture: arch, ...(variant ? { variant } : {}) };
}

export interface ImageSourceOptions {
  platform: PlatformSpec;
  /** Pulled images go to `{cacheDir}/{registry}/{repository}/{tag or digest}` (an OCI layout each). */
  cacheDir: string;
  credentials?: (registry: string) => Promise<RegistryAuth | undefined>;
  onProgress?: (event: ProgressEvent) => void;
  signal?: AbortSignal;
  logger?: Logger;
}

export interface ImageSource {
  layoutDir: string;
  /** The layout's tag to unpack, when the image was pulled by tag. */
  tag?: string;
  reference?: ImageReference;
  pulled?: PullImageResult;
}

/** The layout directory for `input`: itself, or a pull of it (blobs already there are reused). */
export async function resolveImageSource(input: string, options: ImageSourceOptions): Promise<ImageSource> {
  if (!isImageReference(input)) return { layoutDir: input };
  const reference = parseImageReference(input);
  const leaf = reference.tag ?? reference.digest?.replace(":", "-");
  if (leaf === undefined) {
    throw new OrchestratorError(
      "INVALID_OPTIONS",
      `image ${reference.canonical} names neither a tag nor a digest; give one, e.g. ${reference.canonical}:latest`,
      { details: { image: input } },
    );
  }
  const layoutDir = join(options.cacheDir, reference.registry, reference.repository, leaf);
  const auth = await options.credentials?.(reference.registry);
  const pulled = await pullImage({
    reference: input,
    platform: options.platform,
    dest: layoutDir,
    ...(auth ? { auth } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.logger ? { logger: options.logger } : {}),
    onProgress: (progress) =>
      options.onProgress?.({
        task: `${progress.kind} ${progress.digest.slice(7, 19)}`,
        phase: "pull",
        bytes: progress.bytes,
        totalBytes: progress.totalBytes,
        done: progress.status !== "downloading",
      }),
  });
  return { layoutDir, ...(reference.tag ? { tag: reference.tag } : {}), reference, pulled };
}
