import { SbxError } from "@sbx/arch";

/** The stable codes of `RootfsError`. */
export type RootfsErrorCode =
  | "INVALID_OPTIONS"
  | "COMMAND_FAILED"
  | "TOOL_MISSING"
  | "BUSYBOX_NOT_FOUND"
  | "BUSYBOX_CHECKSUM_MISSING"
  | "BUSYBOX_CHECKSUM_MISMATCH"
  | "BUSYBOX_ARCH_MISMATCH"
  | "BUSYBOX_NOT_STATIC"
  | "BUSYBOX_FETCH_FAILED"
  | "INJECT_FAILED"
  | "EXT4_BUILD_FAILED"
  | "EXT4_CHECK_FAILED"
  | "EXT4_REPAIR_FAILED"
  // OCI layouts, unpacking and pulling
  | "OCI_LAYOUT_INVALID"
  | "OCI_BLOB_MISSING"
  | "OCI_DIGEST_MISMATCH"
  | "OCI_UNSUPPORTED_MEDIA_TYPE"
  | "PLATFORM_NOT_FOUND"
  | "LAYER_INVALID"
  | "LAYER_UNSAFE_ENTRY"
  | "UNPACK_DEST_NOT_EMPTY"
  | "UNPACK_LIMIT_EXCEEDED"
  | "ZSTD_UNSUPPORTED"
  | "REFERENCE_INVALID"
  | "REGISTRY_AUTH_FAILED"
  | "REGISTRY_NOT_FOUND"
  | "REGISTRY_REQUEST_FAILED";

/** The one error class of @sbx/rootfs. `code` is stable; the message says what failed and the fix. */
export class RootfsError extends SbxError<RootfsErrorCode> {
  static override readonly errorScope = "rootfs";
  override readonly name = "RootfsError";
}
