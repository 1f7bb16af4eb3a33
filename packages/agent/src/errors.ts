import { SbxError, type SbxErrorOptions } from "@sbx/arch";

/** The stable codes of AgentError. */
export type AgentErrorCode =
  | "INVALID_OPTIONS"
  /** No connection could be made (or re-made) within the connect timeout. */
  | "AGENT_UNREACHABLE"
  /** The connection dropped while a request that cannot be retried was in flight. */
  | "CONNECTION_RESET"
  /** The other side broke the wire format; the connection (or the stream) was closed. */
  | "PROTOCOL_ERROR"
  | "UNSUPPORTED_VERSION"
  /** Firecracker's hybrid-vsock socket refused `CONNECT <port>` (nothing listens on the port yet). */
  | "VSOCK_CONNECT_FAILED"
  | "EXEC_TIMEOUT"
  | "ABORTED"
  | "COMMAND_NOT_FOUND"
  | "EXEC_FAILED"
  | "PROCESS_NOT_FOUND"
  /** Another client attached to the process. */
  | "DETACHED"
  | "FILE_NOT_FOUND"
  | "PERMISSION_DENIED"
  | "FILE_EXISTS"
  | "NOT_A_DIRECTORY"
  | "IS_A_DIRECTORY"
  | "NOT_A_FILE"
  | "DIRECTORY_NOT_EMPTY"
  | "NO_SPACE"
  | "TOO_MANY_SYMLINKS"
  | "CROSS_DEVICE"
  | "READ_ONLY_FILESYSTEM"
  | "IO_ERROR"
  | "USER_NOT_FOUND"
  /** The agent rejected a request's fields (the host validates first, so this means a version skew). */
  | "INVALID_REQUEST"
  | "UNKNOWN_OP"
  | "TOO_MANY_STREAMS"
  | "TOO_MANY_PROCESSES"
  | "SIGNAL_FAILED"
  | "NOT_A_TTY"
  | "CLOCK_FAILED"
  | "ENTROPY_FAILED"
  /** An agent-side failure with a code this client does not know. */
  | "AGENT_ERROR"
  | "BUILD_FAILED"
  | "CLOSED";

/** Codes the agent itself sends in `{"type":"error"}` frames; anything else maps to AGENT_ERROR. */
export const AGENT_WIRE_ERROR_CODES: ReadonlySet<string> = new Set<AgentErrorCode>([
  "PROTOCOL_ERROR",
  "UNSUPPORTED_VERSION",
  "COMMAND_NOT_FOUND",
  "EXEC_FAILED",
  "PROCESS_NOT_FOUND",
  "DETACHED",
  "FILE_NOT_FOUND",
  "PERMISSION_DENIED",
  "FILE_EXISTS",
  "NOT_A_DIRECTORY",
  "IS_A_DIRECTORY",
  "NOT_A_FILE",
  "DIRECTORY_NOT_EMPTY",
  "NO_SPACE",
  "TOO_MANY_SYMLINKS",
  "CROSS_DEVICE",
  "READ_ONLY_FILESYSTEM",
  "IO_ERROR",
  "USER_NOT_FOUND",
  "INVALID_REQUEST",
  "UNKNOWN_OP",
  "TOO_MANY_STREAMS",
  "TOO_MANY_PROCESSES",
  "SIGNAL_FAILED",
  "NOT_A_TTY",
  "CLOCK_FAILED",
  "ENTROPY_FAILED",
]);

/** The one error class of @sbx/agent. `code` is stable; `errno` is the guest's when it sent one. */
export class AgentError extends SbxError<AgentErrorCode> {
  static override readonly errorScope = "agent";
  override readonly name = "AgentError";
  readonly errno: number | undefined;

  constructor(
    code: AgentErrorCode,
    message: string,
    options: SbxErrorOptions & { errno?: number | undefined } = {},
  ) {
    super(code, message, options);
    this.errno = options.errno;
  }
}
