import { SbxError } from "@sbx/arch";

/** The stable codes of OrchestratorError. */
export type OrchestratorErrorCode =
  | "CONFIG_INVALID"
  | "INVALID_OPTIONS"
  | "STEP_NOT_FOUND"
  | "STEP_DUPLICATE"
  | "STEP_FAILED"
  | "STEP_CLEANUP_FAILED"
  | "ABORTED"
  | "COMMAND_FAILED"
  | "NETWORK_SETUP_FAILED"
  | "ADDRESS_POOL_EXHAUSTED"
  | "STATE_RECORD_INVALID"
  | "STATE_DIR_LOCKED"
  | "SANDBOX_NOT_FOUND"
  | "ID_PREFIX_AMBIGUOUS"
  | "INVALID_ID"
  | "TEMPLATE_INVALID"
  | "TEMPLATE_NOT_FOUND"
  /** No build with that id in the state directory. */
  | "BUILD_NOT_FOUND"
  /** A build record or memory header that is not valid, or a build that is incomplete. */
  | "BUILD_INVALID"
  /** A build that a snapshot's memory header needs is gone: that snapshot cannot be resumed. */
  | "BUILD_MISSING"
  /** gc could not read a pinned build, so it removed nothing. */
  | "GC_UNSAFE"
  | "PROVISION_FAILED"
  | "MEMFD_MISSING"
  /** A remote build's memory chunk could not be fetched while its guest needed it: the sandbox stopped. */
  | "MEMORY_FETCH_FAILED"
  | "ARTIFACT_INVALID"
  | "ARCH_MISMATCH"
  /** The host has no room for the create (see `details.reason` and `details.short`). */
  | "CAPACITY_EXCEEDED"
  | "NOT_AVAILABLE"
  | "DOWNLOAD_FAILED"
  | "DOWNLOAD_NOT_FOUND"
  | "CHECKSUM_MISMATCH"
  | "DOCKER_CONFIG_INVALID";

/** The one error class of @sbx/orchestrator. `code` is stable; the message says what failed and the fix. */
export class OrchestratorError extends SbxError<OrchestratorErrorCode> {
  static override readonly errorScope = "orchestrator";
  override readonly name = "OrchestratorError";
}
