export {
  ACCEPTED_ARCH_NAMES,
  type Arch,
  archSchema,
  hostArch,
  type NormalizeArchOptions,
  normalizeArch,
  SUPPORTED_ARCHES,
  targetArchFromEnv,
} from "./arch.ts";
export {
  type ArtifactLayout,
  artifactCandidates,
  pathSegmentSchema,
  type RejectedCandidate,
  type ResolveArtifactOptions,
  type ResolvedArtifact,
  resolveArtifact,
} from "./artifacts.ts";
export {
  type AtomicFileContent,
  isTempName,
  syncDirectory,
  tempNameOwner,
  tempPathFor,
  type WriteFileAtomicOptions,
  writeFileAtomic,
  writeJsonAtomic,
} from "./atomic-file.ts";
export { type BinaryArch, type BinaryFormat, checkKernelImage, detectBinaryArch } from "./binary-arch.ts";
export {
  type ChecksumResult,
  type ChecksumRule,
  parseSha256Sidecar,
  sha256File,
  sha256HexSchema,
  verifyChecksum,
} from "./checksum.ts";
export { ArchError, type ArchErrorCode } from "./errors.ts";
export {
  compareKernelRelease,
  type GuestMemoryBacking,
  hostKernelRelease,
  type KernelRelease,
  parseKernelRelease,
  uffdWriteProtectSupported,
  type WriteProtectSupport,
} from "./kernel-release.ts";
export { type Logger, silentLogger } from "./logger.ts";
export { type CommandResult, type RunCommandOptions, runCommand } from "./run-command.ts";
export { SbxError, type SbxErrorOptions } from "./sbx-error.ts";
export {
  type ArchTraits,
  archTraits,
  type FirecrackerArgsOptions,
  isStaticCpuTemplateName,
  type KernelImageFormat,
  type OciPlatform,
  STATIC_CPU_TEMPLATE_NAMES,
  type StaticCpuTemplateName,
  staticCpuTemplateArch,
} from "./traits.ts";
