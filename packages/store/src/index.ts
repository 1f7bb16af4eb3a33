export {
  type BuildStore,
  checkKey,
  type GetOptions,
  type PutBody,
  type RequestOptions,
  type StoredObject,
} from "./build-store.ts";
export {
  ChunkCache,
  type ChunkCacheOptions,
  type ChunkCacheStats,
  type ChunkFetcher,
} from "./chunk-cache.ts";
export { chunkCacheOptionsFromEnv, parseByteSize } from "./chunk-cache-from-env.ts";
export {
  type ChunkEntry,
  type ChunkTable,
  chunksOverlapping,
  chunkTableSchema,
  findChunk,
  parseChunkTable,
} from "./chunk-table.ts";
export type { Compression } from "./compression.ts";
export {
  type DownloadBuildOptions,
  type DownloadReport,
  downloadBuild,
  fetchBuildManifest,
  MEMORY_CHUNK_TABLE_FILE,
} from "./download.ts";
export { StoreError, type StoreErrorCode } from "./errors.ts";
export { type FetchCounter, fetchChunk, fetchChunkTable } from "./fetch-chunk.ts";
export { FilesystemStore, type FilesystemStoreOptions } from "./filesystem-store.ts";
export {
  buildFileKey,
  buildPrefix,
  chunkKey,
  chunkTableKey,
  DEFAULT_CHUNK_SIZE,
  STORED_BUILD_FILES,
  type StoredManifest,
  storedManifestSchema,
} from "./layout.ts";
export { type LocalChunk, RemoteMemory, type RemoteMemoryOptions } from "./remote-memory.ts";
export { S3Store, type S3StoreOptions } from "./s3-store.ts";
export {
  parseStoreUrl,
  type StoreFromEnvOptions,
  type StoreLocation,
  storeFromEnv,
} from "./store-from-env.ts";
export { type ByteRange, type UploadBuildOptions, type UploadReport, uploadBuild } from "./upload.ts";
