import { createHash } from "node:crypto";
import { chmod, mkdtemp, readdir, readFile, rename, rm, rmdir, stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { PassThrough, Transform, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import zlib from "node:zlib";
import { type Logger, silentLogger } from "@sbx/arch";
import { z } from "zod";
import { RootfsError } from "./errors.ts";
import { LayerApplier, type SkippedEntry, type SpecialFilePolicy, type XattrSummary } from "./layer-apply.ts";
import type { OciLayout } from "./oci-layout.ts";
import { type Descriptor, type ImageConfig, type LayerCompression, layerCompression } from "./oci-schemas.ts";
import {
  type ManifestSource,
  type PlatformSpec,
  type PlatformTriple,
  type SelectedImage,
  schemaFor,
  selectImage,
} from "./platform.ts";
import { TarFormatError, TarParser } from "./tar-reader.ts";
import { hostXattrPrivileges, type XattrOptions, type XattrPolicy, xattrOptionsSchema } from "./xattr.ts";

/** Where `unpackImage` is: which layer, its bytes read, and the entries applied. */
export interface UnpackProgress {
  layerIndex: number;
  layerCount: number;
  digest: string;
  /** Compressed bytes of this layer read so far, and the layer's size. */
  bytes: number;
  totalBytes: number;
  /** Tar entries applied so far, over all layers. */
  entries: number;
  done: boolean;
}

/** Bounds on an untrusted image's layers: total uncompressed bytes, entries and path depth. */
export interface UnpackLimits {
  maxUncompressedBytes?: number;
  maxEntries?: number;
  maxPathDepth?: number;
}

/** What `unpackImage` applies (an image of a layout, for a platform) into which new directory, within which limits. */
export interface UnpackImageOptions {
  layout: OciLayout;
  platform: PlatformSpec;
  /** The directory to create. It must not exist or be empty; it appears only when the unpack succeeded. */
  dest: string;
  /** Pick among several top-level images by their `org.opencontainers.image.ref.name`. */
  tag?: string;
  onProgress?: (progress: UnpackProgress) => void;
  /** Device nodes: "skip" (default), "create" (needs CAP_MKNOD) or "refuse". */
  devices?: SpecialFilePolicy;
  /** Fifos: "create" (default), "skip" or "refuse". */
  fifos?: SpecialFilePolicy;
  /**
   * Caps against decompression bombs, entry floods and path-depth bombs (default: none): the total
   * uncompressed tar bytes and tar entries over all layers, and the components of any one path.
   * Exceeding one fails with UNPACK_LIMIT_EXCEEDED.
   */
  limits?: UnpackLimits;
  /** Apply entry uid/gid (default: when running as root). */
  preserveOwnership?: boolean;
  /**
   * Extended attributes from the layers' PAX headers: file capabilities, POSIX ACLs, `user.*` and
   * `trusted.*` are applied; LSM labels only with `lsmLabels: true`; bounds per entry and per layer
   * (exceeding one fails with UNPACK_LIMIT_EXCEEDED). Writing them needs `setfattr` (Debian `attr`)
   * when the image has any.
   */
  xattrs?: XattrOptions;
  signal?: AbortSignal;
  logger?: Logger;
}

/** The unpacked tree: its directory, the manifest and platform it came from, the image config, what was skipped. */
export interface UnpackImageResult {
  dest: string;
  manifestDigest: string;
  platform: PlatformTriple;
  config: ImageConfig;
  layers: { digest: string; size: number; mediaType: string }[];
  entries: number;
  /** Entries not applied because of the device/fifo policy. */
  skipped: SkippedEntry[];
  /** xattrs written, and those not applied grouped by name and reason (each also logged). */
  xattrs: XattrSummary;
}

function parseXattrOptions(input: XattrOptions | undefined): XattrPolicy {
  const parsed = xattrOptionsSchema.safeParse(input ?? {});
  if (!parsed.success) {
    throw new RootfsError("INVALID_OPTIONS", `unpackImage xattrs: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
    });
  }
  return parsed.data;
}

/** A ManifestSource over an OCI layout (schemas applied, digests and sizes verified). */
export function layoutManifestSource(layout: OciLayout): ManifestSource {
  return {
    readJson: (descriptor, kind) => layout.readJsonBlob(descriptor, schemaFor(kind)) as never,
  };
}

/** The manifest and config of a layout's image for `platform` (and `tag`, when the layout holds several). */
export async function selectLayoutImage(
  layout: OciLayout,
  platform: PlatformSpec,
  tag?: string,
): Promise<SelectedImage> {
  return selectImage(layoutManifestSource(layout), layout.index, platform, {
    tag,
    where: `OCI layout ${layout.path}`,
  });
}

/**
 * Unpack the image for `platform` from an OCI layout into `dest`: layers are streamed (verified
 * against their digest and size as they are read, decompressed on the fly) and applied in order into
 * a private staging directory next to `dest`, which is renamed into place at the end and removed on
 * any failure.
 */
export async function unpackImage(options: UnpackImageOptions): Promise<UnpackImageResult> {
  const logger = options.logger ?? silentLogger;
  const xattrPolicy = parseXattrOptions(options.xattrs);
  const dest = resolve(options.dest);
  const image = await selectLayoutImage(options.layout, options.platform, options.tag);
  await checkDestination(dest);

  const staging = await mkdtemp(join(dirname(dest), `.${basename(dest)}.unpack-`));
  let applier: LayerApplier | undefined;
  try {
    await chmod(staging, 0o700);
    const active = new LayerApplier(staging, {
      devices: options.devices ?? "skip",
      fifos: options.fifos ?? "create",
      preserveOwnership: options.preserveOwnership ?? process.getuid?.() === 0,
      xattrs: xattrPolicy,
      hostPrivileges: hostXattrPrivileges(await readFile("/proc/self/status", "utf8").catch(() => "")),
      logger,
      ...(options.limits?.maxPathDepth === undefined ? {} : { maxPathDepth: options.limits.maxPathDepth }),
    });
    applier = active;
    const uncompressed = { bytes: 0 };
    const layers = image.manifest.layers;
    for (const [layerIndex, layer] of layers.entries()) {
      options.signal?.throwIfAborted();
      logger.debug?.({ digest: layer.digest, size: layer.size, layerIndex }, "applying layer");
      await applyLayer(
        options.layout,
        layer,
        active,
        (bytes, done) =>
          options.onProgress?.({
            layerIndex,
            layerCount: layers.length,
            digest: layer.digest,
            bytes,
            totalBytes: layer.size,
            entries: active.entries,
            done,
          }),
        options.signal,
        options.limits ?? {},
        uncompressed,
      );
    }
    active.finish();
    await checkDestination(dest);
    await rmdir(dest).catch(() => undefined);
    await rename(staging, dest);
    logger.info?.({ dest, layers: layers.length, entries: active.entries }, "image unpacked");
    return {
      dest,
      manifestDigest: image.manifestDescriptor.digest,
      platform: image.platform,
      config: image.config,
      layers: layers.map((l) => ({ digest: l.digest, size: l.size, mediaType: l.mediaType })),
      entries: active.entries,
      skipped: active.skipped,
      xattrs: active.xattrSummary(),
    };
  } catch (error) {
    applier?.abort();
    await rm(staging, { recursive: true, force: true });
    throw error;
  }
}

async function checkDestination(dest: string): Promise<void> {
  const info = await stat(dest).catch(() => undefined);
  if (!info) return;
  if (!info.isDirectory() || (await readdir(dest)).length > 0) {
    throw new RootfsError(
      "UNPACK_DEST_NOT_EMPTY",
      `unpack destination ${dest} exists and is not an empty directory; remove it or choose a new path`,
      { details: { dest } },
    );
  }
}

const PROGRESS_STEP = 4 * 1024 * 1024;

async function applyLayer(
  layout: OciLayout,
  layer: Descriptor,
  applier: LayerApplier,
  progress: (bytes: number, done: boolean) => void,
  signal: AbortSignal | undefined,
  limits: UnpackLimits,
  uncompressed: { bytes: number },
): Promise<void> {
  const compression = layerCompression(layer.mediaType);
  if (compression === undefined) {
    throw new RootfsError(
      "OCI_UNSUPPORTED_MEDIA_TYPE",
      `layer ${layer.digest} has media type ${layer.mediaType}, which is not a tar layer this package can apply (OCI/Docker tar, tar+gzip, tar+zstd)`,
      { details: { layer: layer.digest, mediaType: layer.mediaType } },
    );
  }
  const source = await layout.openBlob(layer.digest);
  const parser = new TarParser(applier.beginLayer(layer.digest));
  const sink = new Writable({
    highWaterMark: 1024 * 1024,
    write(chunk: Buffer, _encoding, callback) {
      try {
        uncompressed.bytes += chunk.length;
        if (limits.maxUncompressedBytes !== undefined && uncompressed.bytes > limits.maxUncompressedBytes) {
          throw limitExceeded(layer.digest, `more than ${limits.maxUncompressedBytes} uncompressed bytes`);
        }
        parser.write(chunk);
        if (limits.maxEntries !== undefined && applier.entries > limits.maxEntries) {
          throw limitExceeded(layer.digest, `more than ${limits.maxEntries} entries`);
        }
        callback();
      } catch (error) {
        callback(error as Error);
      }
    },
    final(callback) {
      try {
        parser.end();
        callback();
      } catch (error) {
        callback(error as Error);
      }
    },
  });
  try {
    await pipeline(
      source,
      verifyingStream(layer, `layer ${layer.digest}`, progress),
      decompressor(compression, layer.digest),
      sink,
      signal ? { signal } : {},
    );
  } catch (error) {
    if (error instanceof RootfsError) throw error;
    if (error instanceof TarFormatError) {
      throw new RootfsError("LAYER_INVALID", `layer ${layer.digest} is not a valid tar: ${error.message}`, {
        cause: error,
        details: { layer: layer.digest },
      });
    }
    if (
      (error as { code?: string }).code?.startsWith("Z_") ||
      (error as { code?: string }).code?.startsWith("ERR_ZSTD")
    ) {
      throw new RootfsError(
        "LAYER_INVALID",
        `layer ${layer.digest} could not be decompressed as ${compression}: ${(error as Error).message}`,
        { cause: error, details: { layer: layer.digest, compression } },
      );
    }
    throw error;
  }
  applier.endLayer();
  progress(layer.size, true);
}

function limitExceeded(layer: string, what: string): RootfsError {
  return new RootfsError(
    "UNPACK_LIMIT_EXCEEDED",
    `the image exceeds the unpack limit at layer ${layer}: ${what}. Raise limits if the image is trusted and really this large`,
    { details: { layer, limit: what } },
  );
}

/**
 * Pass bytes through while hashing and counting them; fails the stream when the content grows past
 * the descriptor's size, or when the digest or size differ at the end.
 */
export function verifyingStream(
  descriptor: Descriptor,
  what: string,
  progress?: (bytes: number, done: boolean) => void,
): Transform {
  const [algorithm, expected] = descriptor.digest.split(":") as [string, string];
  const hash = createHash(algorithm);
  let bytes = 0;
  let reported = 0;
  return new Transform({
    highWaterMark: 1024 * 1024,
    transform(chunk: Buffer, _encoding, callback) {
      bytes += chunk.length;
      if (bytes > descriptor.size) {
        callback(
          new RootfsError(
            "OCI_DIGEST_MISMATCH",
            `${what} is larger than the ${descriptor.size} bytes its descriptor declares; the blob was altered`,
            { details: { digest: descriptor.digest, expectedSize: descriptor.size } },
          ),
        );
        return;
      }
      hash.update(chunk);
      if (progress && bytes - reported >= PROGRESS_STEP) {
        reported = bytes;
        progress(bytes, false);
      }
      callback(null, chunk);
    },
    flush(callback) {
      if (bytes !== descriptor.size) {
        callback(
          new RootfsError(
            "OCI_DIGEST_MISMATCH",
            `${what} is ${bytes} bytes but its descriptor declares ${descriptor.size}; the blob is truncated or altered`,
            { details: { digest: descriptor.digest, expectedSize: descriptor.size, actualSize: bytes } },
          ),
        );
        return;
      }
      const actual = hash.digest("hex");
      if (actual !== expected) {
        callback(
          new RootfsError(
            "OCI_DIGEST_MISMATCH",
            `${what} has digest ${algorithm}:${actual}, not ${descriptor.digest}; the blob was altered`,
            { details: { digest: descriptor.digest, actual: `${algorithm}:${actual}` } },
          ),
        );
        return;
      }
      callback();
    },
  });
}

/**
 * zstd comes from Node's own zlib (`createZstdDecompress`, in Node 22.15+/23.8+, which the package's
 * `engines` range requires): no native addon or external process, and libzstd streams in constant
 * memory. On a Node without it, zstd layers fail with ZSTD_UNSUPPORTED; gzip and plain layers still work.
 */
function decompressor(compression: LayerCompression, digest: string): Transform {
  switch (compression) {
    case "none":
      return new PassThrough({ highWaterMark: 1024 * 1024 });
    case "gzip":
      return zlib.createGunzip({ chunkSize: 256 * 1024 });
    case "zstd": {
      const create = (zlib as { createZstdDecompress?: (options?: object) => Transform })
        .createZstdDecompress;
      if (!create) {
        throw new RootfsError(
          "ZSTD_UNSUPPORTED",
          `layer ${digest} is zstd-compressed and this Node (${process.version}) has no zlib zstd support; use Node >= 22.15 (the supported range is ^22.18 || >=24.11)`,
          { details: { layer: digest, node: process.version } },
        );
      }
      return create({ chunkSize: 256 * 1024 });
    }
  }
}
