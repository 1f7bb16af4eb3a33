import { SbxError } from "@sbx/arch";

/** The stable codes of `CpuTemplateError`. */
export type CpuTemplateErrorCode =
  | "INVALID_TEMPLATE"
  | "INVALID_BITMAP"
  | "INVALID_FINGERPRINT"
  | "WRONG_ARCH"
  | "CONFLICTING_ENV"
  | "MIXED_FLEET"
  | "ID_REGISTERS_NOT_WRITABLE"
  | "HOST_READ_FAILED"
  /** The running Firecracker cannot load a snapshot another Firecracker version wrote. */
  | "SNAPSHOT_VERSION_INCOMPATIBLE";

/** The one error class of @sbx/cpu-template; `code` is stable. */
export class CpuTemplateError extends SbxError<CpuTemplateErrorCode> {
  static override readonly errorScope = "cpu-template";
  override readonly name = "CpuTemplateError";
}
