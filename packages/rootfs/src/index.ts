export {
  busyboxOptionsFromEnv,
  DEFAULT_BUSYBOX_VERSION,
  type ResolveBusyboxOptions,
  type ResolvedBusybox,
  resolveBusybox,
} from "./busybox.ts";
export { type ElfLinkage, readElfLinkage } from "./elf.ts";
export { RootfsError, type RootfsErrorCode } from "./errors.ts";
export {
  type BuildExt4ImageOptions,
  type BuildExt4ImageResult,
  buildExt4Image,
  type ContentEstimate,
  E2FSCK_EXIT,
  type Ext4CheckStep,
  type Ext4Progress,
  e2fsckSucceeded,
  estimateContent,
  type RepairExt4Result,
  repairExt4,
} from "./ext4.ts";
export {
  debianUpstreamVersion,
  type FetchBusyboxOptions,
  type FetchBusyboxResult,
  fetchBusybox,
} from "./fetch-busybox.ts";
export {
  GUEST_BUSYBOX,
  GUEST_DIR,
  GUEST_INIT,
  type InjectGuestFilesOptions,
  type InjectGuestFilesResult,
  injectGuestFiles,
  listBusyboxApplets,
  SETUP_NETWORK_UNIT,
} from "./guest-files.ts";
export { PROVISION_EXIT_MARKER, parseProvisionExit, READY_MARKER } from "./guest-scripts.ts";
export {
  buildKernelCmdline,
  formatIpParameter,
  type KernelCmdlineOptions,
  type KernelNetwork,
  parseIpParameter,
  prefixToNetmask,
} from "./kernel-cmdline.ts";
export type { IgnoredXattrs, SkippedEntry, SpecialFilePolicy, XattrSummary } from "./layer-apply.ts";
export { blobPath, type OciLayout, readOciLayout } from "./oci-layout.ts";
export {
  type Descriptor,
  type Digest,
  descriptorSchema,
  digestSchema,
  type ImageConfig,
  type ImageIndex,
  type ImageManifest,
  type ImagePlatform,
  INDEX_MEDIA_TYPES,
  imageConfigSchema,
  imageIndexSchema,
  imageManifestSchema,
  imageRuntimeConfigSchema,
  type LayerCompression,
  layerCompression,
  MANIFEST_MEDIA_TYPES,
  MEDIA_TYPES,
  ociLayoutFileSchema,
  platformSchema,
  REF_NAME_ANNOTATION,
} from "./oci-schemas.ts";
export {
  formatPlatform,
  type PlatformSpec,
  type PlatformTriple,
  platformMatchScore,
  type SelectedImage,
} from "./platform.ts";
export { type ImageReference, parseImageReference } from "./reference.ts";
export {
  type PullImageOptions,
  type PullImageResult,
  type PullProgress,
  pullImage,
  type RegistryAuth,
} from "./registry.ts";
export {
  selectLayoutImage,
  type UnpackImageOptions,
  type UnpackImageResult,
  type UnpackLimits,
  type UnpackProgress,
  unpackImage,
} from "./unpack.ts";
export {
  type FileCapability,
  type PosixAclEntry,
  parseFileCapability,
  parsePosixAcl,
  type XattrOptions,
  xattrOptionsSchema,
} from "./xattr.ts";
