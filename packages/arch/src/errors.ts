import { SbxError } from "./sbx-error.ts";

/** The stable codes of `ArchError`. */
export type ArchErrorCode =
  | "UNKNOWN_ARCH"
  | "UNSUPPORTED_HOST_ARCH"
  | "INVALID_KERNEL_RELEASE"
  | "INVALID_OPTIONS"
  | "SECCOMP_CHOICE_REQUIRED"
  | "ARTIFACT_NOT_FOUND"
  | "ARTIFACT_UNREADABLE"
  | "ARTIFACT_ARCH_MISMATCH"
  | "ARTIFACT_CHECKSUM_MISSING"
  | "ARTIFACT_CHECKSUM_MISMATCH"
  | "UNKNOWN_BINARY_FORMAT"
  | "UNSUPPORTED_BINARY_ARCH"
  | "KERNEL_FORMAT_UNSUPPORTED"
  | "TOOL_MISSING"
  | "COMMAND_FAILED";

/** The one error class of @sbx/arch. `code` is stable; the message says what failed and the fix. */
export class ArchError extends SbxError<ArchErrorCode> {
  static override readonly errorScope = "arch";
  override readonly name = "ArchError";
}
