export type UffdErrorCode =
  /** A control message that is not a well-formed SOL_SOCKET/SCM_RIGHTS chain, or was truncated. */
  | "BAD_CONTROL_MESSAGE"
  /** The peer's mapping JSON or its fds are not what Firecracker sends. */
  | "BAD_HANDSHAKE"
  /** The connecting process is not the expected Firecracker (SO_PEERCRED). */
  | "PEER_MISMATCH"
  | "ACCEPT_TIMEOUT"
  | "HANDSHAKE_TIMEOUT"
  /** The peer closed the connection before sending its mappings. */
  | "PEER_CLOSED"
  /** A syscall failed; `errno` and `syscall` say which. */
  | "SYSCALL_FAILED"
  /** A fault could not be served; `address` and `errno` say where and why. */
  | "FAULT_FAILED"
  | "SOCKET_IN_USE"
  | "INVALID_OPTIONS"
  | "MEMORY_FILE_INVALID"
  /** A memory header that is truncated, fails its checksum, or maps pages twice, nowhere or out of range. */
  | "MEMORY_HEADER_INVALID"
  /** A working-set file that is truncated, fails its checksum, or lists pages unaligned, twice or out of range. */
  | "WORKING_SET_INVALID"
  | "CLOSED";

/** The one error class of @sbx/uffd. `code` is stable; `errno`, `syscall` and `address` are set where they apply. */
export class UffdError extends Error {
  override name = "UffdError";
  readonly code: UffdErrorCode;
  readonly errno: number | undefined;
  readonly syscall: string | undefined;
  readonly address: number | undefined;

  constructor(
    code: UffdErrorCode,
    message: string,
    options: { errno?: number; syscall?: string; address?: number; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.errno = options.errno;
    this.syscall = options.syscall;
    this.address = options.address;
  }
}

/** Throws SYSCALL_FAILED when a libc call returned -1. */
export function check(syscall: string, result: { value: number; errno: number }): number {
  if (result.value === -1)
    throw new UffdError("SYSCALL_FAILED", `${syscall} failed: errno ${result.errno}`, {
      errno: result.errno,
      syscall,
    });
  return result.value;
}
