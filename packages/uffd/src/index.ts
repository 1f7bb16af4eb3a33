export type { RemoteMemorySource } from "./chunk-fetches.ts";
export { errnoName, UffdError, type UffdErrorCode, type UffdErrorOptions } from "./errors.ts";
export {
  fdKind,
  type GuestRegion,
  guestRegionMappingSchema,
  type Handshake,
  handshakeSchema,
  parseHandshake,
} from "./handshake.ts";
export * as kernel from "./linux.ts";
export {
  type ByteRange,
  createMemfd,
  type ExportResult,
  exportRanges,
  Memfd,
  type MemfdSeal,
} from "./memfd.ts";
export {
  decodeMemoryHeader,
  encodeMemoryHeader,
  fullMemoryHeader,
  MAX_HEADER_BUILDS,
  MEMORY_HEADER_VERSION,
  type MemoryHeader,
  type MemoryHeaderEntry,
  memoryFileExtents,
  memoryHeaderLayers,
  overlayMemoryHeader,
  ownedRanges,
  validateMemoryHeader,
} from "./memory-header.ts";
export {
  buildNativeHelper,
  bundledNativeHelperPath,
  NATIVE_HELPER_ABI,
  NATIVE_HELPER_TOOLCHAINS,
  resolveNativeHelper,
} from "./native-helper.ts";
export { parseScmRights, type ReceivedMessage, receivedFdsOf, recvWithFds } from "./scm-rights.ts";
export {
  type Logger,
  type PageFaultMetrics,
  PageFaultServer,
  type PageFaultServerOptions,
  type PageFaultServerReady,
  type PageFaultServerStop,
  prewarmPageFaultWorkers,
  warmPageFaultWorkerCount,
} from "./server.ts";
export type { StopReason } from "./worker-protocol.ts";
export {
  decodeWorkingSet,
  encodeWorkingSet,
  MAX_WORKING_SET_BYTES,
  MAX_WORKING_SET_RANGES,
  validateWorkingSet,
  WORKING_SET_PAGE_SIZE,
  WORKING_SET_VERSION,
  type WorkingSet,
  type WorkingSetRange,
  workingSetFromTrace,
  workingSetPages,
} from "./working-set.ts";
