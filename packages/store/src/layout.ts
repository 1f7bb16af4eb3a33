// What a build looks like in the store:
//
//   builds/{id}/build.json                    written LAST: a build without it is not in the store
//   builds/{id}/vmstate, memory.header, ...   small files, whole, sha256 from build.json
//   builds/{id}/memory.chunks.json            chunk table of the memory file (only chunks with owned pages)
//   builds/{id}/memory.chunks/{index}-{sha256} one chunk, zstd frame or raw bytes
//   builds/{id}/rootfs.ext4.chunks.json, rootfs.ext4.chunks/...   the same for the root filesystem
import { z } from "zod";

/** The names the orchestrator gives a build's files (its BUILD_FILES); the store moves files by these names. */
export const STORED_BUILD_FILES = Object.freeze({
  manifest: "build.json",
  memory: "memory",
  header: "memory.header",
  rootfs: "rootfs.ext4",
});

/** Files stored in chunks; every other file build.json lists is stored whole. */
export const CHUNKED_FILES: readonly string[] = [STORED_BUILD_FILES.memory, STORED_BUILD_FILES.rootfs];

/** Bytes per chunk unless an upload says otherwise: 4 MiB. */
export const DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024;

const sha256 = z.string().regex(/^[0-9a-f]{64}$/, "a lowercase hex sha256");
export const storedBuildIdSchema = z
  .string()
  .regex(/^[0-9A-Za-z_-]{1,64}$/, "a build id of [0-9A-Za-z_-], 1 to 64 characters");
const fileNameSchema = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, "a build file name");

/**
 * The part of build.json the store relies on; everything else in it is carried as it is. The
 * orchestrator's own schema (buildManifestSchema) is stricter; the store stays a leaf and checks only
 * what it moves.
 */
export const storedManifestSchema = z.looseObject({
  id: storedBuildIdSchema,
  files: z.record(fileNameSchema, z.object({ sizeBytes: z.number().int().nonnegative(), sha256 }).optional()),
});
/** A stored build's build.json, as far as the store reads it. */
export type StoredManifest = z.infer<typeof storedManifestSchema>;

/** The key prefix of everything a build stores. */
export const buildPrefix = (id: string): string => `builds/${storedBuildIdSchema.parse(id)}/`;
/** The key of a build's whole file (build.json, vmstate, memory.header, …). */
export const buildFileKey = (id: string, file: string): string => `${buildPrefix(id)}${file}`;
/** The key of the chunk table of a build's chunked file. */
export const chunkTableKey = (id: string, file: string): string => `${buildPrefix(id)}${file}.chunks.json`;
/** The key of one chunk, with its digest, so a resumed upload skips what is there. */
export const chunkKey = (id: string, file: string, index: number, digest: string): string =>
  `${buildPrefix(id)}${file}.chunks/${String(index).padStart(7, "0")}-${digest}`;
