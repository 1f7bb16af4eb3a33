import { z } from "zod";

/**
 * zod schemas for the OCI image-spec documents (index, manifest, config, descriptor) and the Docker
 * schema-2 equivalents (manifest list, manifest), which registries and `docker save` still produce.
 * Unknown fields pass through; what this package relies on is checked.
 */

export const MEDIA_TYPES = Object.freeze({
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayer: "application/vnd.oci.image.layer.v1.tar",
  ociLayerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  ociLayerZstd: "application/vnd.oci.image.layer.v1.tar+zstd",
  ociLayerNondistributable: "application/vnd.oci.image.layer.nondistributable.v1.tar",
  ociLayerNondistributableGzip: "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
  ociLayerNondistributableZstd: "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
  dockerManifestList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerLayerGzip: "application/vnd.docker.image.rootfs.diff.tar.gzip",
  dockerLayer: "application/vnd.docker.image.rootfs.diff.tar",
});

/** Media types of an image index: OCI's and Docker's manifest list. */
export const INDEX_MEDIA_TYPES: readonly string[] = [MEDIA_TYPES.ociIndex, MEDIA_TYPES.dockerManifestList];
/** Media types of an image manifest: OCI's and Docker's schema 2. */
export const MANIFEST_MEDIA_TYPES: readonly string[] = [MEDIA_TYPES.ociManifest, MEDIA_TYPES.dockerManifest];

/** How a layer blob is compressed. */
export type LayerCompression = "none" | "gzip" | "zstd";

/** The compression a layer media type declares, or undefined when it is not a layer type this package applies. */
export function layerCompression(mediaType: string): LayerCompression | undefined {
  switch (mediaType) {
    case MEDIA_TYPES.ociLayer:
    case MEDIA_TYPES.ociLayerNondistributable:
    case MEDIA_TYPES.dockerLayer:
      return "none";
    case MEDIA_TYPES.ociLayerGzip:
    case MEDIA_TYPES.ociLayerNondistributableGzip:
    case MEDIA_TYPES.dockerLayerGzip:
      return "gzip";
    case MEDIA_TYPES.ociLayerZstd:
    case MEDIA_TYPES.ociLayerNondistributableZstd:
      return "zstd";
    default:
      return undefined;
  }
}

/**
 * A content digest. Only sha256 and sha512 with lowercase hex of the right length are accepted: the
 * digest becomes a file name under `blobs/`, so anything looser would be a path-traversal vector.
 */
export const digestSchema = z
  .string()
  .regex(/^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/, "expected sha256:<64 hex> or sha512:<128 hex>");
/** A content digest: `sha256:<64 hex>` or `sha512:<128 hex>`. */
export type Digest = z.infer<typeof digestSchema>;

/** An OCI platform (os, architecture, variant, os.version) as an index entry gives it. */
export const platformSchema = z.looseObject({
  architecture: z.string(),
  os: z.string(),
  variant: z.string().optional(),
  "os.version": z.string().optional(),
  "os.features": z.array(z.string()).optional(),
});
/** An OCI platform as an index entry gives it. */
export type ImagePlatform = z.infer<typeof platformSchema>;

/** An OCI content descriptor: media type, digest, size, and an optional platform. */
export const descriptorSchema = z.looseObject({
  mediaType: z.string(),
  digest: digestSchema,
  size: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  urls: z.array(z.string()).optional(),
  annotations: z.record(z.string(), z.string()).optional(),
  platform: platformSchema.optional(),
  artifactType: z.string().optional(),
});
/** An OCI content descriptor. */
export type Descriptor = z.infer<typeof descriptorSchema>;

/** OCI image index or Docker manifest list. */
export const imageIndexSchema = z.looseObject({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(descriptorSchema),
  annotations: z.record(z.string(), z.string()).optional(),
});
/** An OCI image index or Docker manifest list. */
export type ImageIndex = z.infer<typeof imageIndexSchema>;

/** OCI image manifest or Docker schema-2 manifest. */
export const imageManifestSchema = z.looseObject({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: descriptorSchema,
  layers: z.array(descriptorSchema),
  annotations: z.record(z.string(), z.string()).optional(),
});
/** An OCI image manifest or Docker schema-2 manifest. */
export type ImageManifest = z.infer<typeof imageManifestSchema>;

/** The runtime part of an image config (`config` in the OCI spec, `config`/`container_config` in Docker's). */
export const imageRuntimeConfigSchema = z.looseObject({
  User: z.string().optional(),
  Env: z.array(z.string()).nullish(),
  Entrypoint: z.array(z.string()).nullish(),
  Cmd: z.array(z.string()).nullish(),
  WorkingDir: z.string().optional(),
  Labels: z.record(z.string(), z.string()).nullish(),
  StopSignal: z.string().optional(),
});

/** An OCI (or Docker) image config: platform, history, rootfs diff ids and the runtime config. */
export const imageConfigSchema = z.looseObject({
  architecture: z.string(),
  os: z.string(),
  variant: z.string().optional(),
  created: z.string().optional(),
  config: imageRuntimeConfigSchema.nullish(),
  rootfs: z.looseObject({
    type: z.literal("layers"),
    diff_ids: z.array(digestSchema),
  }),
});
/** An OCI (or Docker) image config. */
export type ImageConfig = z.infer<typeof imageConfigSchema>;

/** An OCI layout's `oci-layout` file. */
export const ociLayoutFileSchema = z.looseObject({ imageLayoutVersion: z.string() });

/** The annotation OCI layouts use for a tag (`skopeo copy ... oci:dir:TAG`, `umoci`). */
export const REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name";
