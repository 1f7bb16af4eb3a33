import { getSystemErrorName } from "node:util";
import { SbxError, type SbxErrorOptions } from "@sbx/arch";

/** The stable codes of UffdError. */
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
  /** A chunk of a remote build's memory could not be had in time (store down, slow, or corrupt bytes). */
  | "MEMORY_FETCH_FAILED"
  | "CLOSED";

/**
 * The name of a Linux errno (17 → "EEXIST"), or undefined for a number the platform does not know. The
 * table is Node's (libuv's, built for this platform), so uffd keeps no copy of the numbers' names.
 */
export function errnoName(errno: number): string | undefined {
  if (!Number.isInteger(errno) || errno <= 0) return undefined;
  const name = getSystemErrorName(-errno);
  return /^E[A-Z0-9]+$/.test(name) ? name : undefined;
}

/** The options of `UffdError`: where a syscall or fault failed, and how. */
export interface UffdErrorOptions extends SbxErrorOptions {
  errno?: number;
  syscall?: string;
  address?: number;
}

/**
 * The one error class of @sbx/uffd. `code` is stable; `errno` (with its name, `errnoName`), `syscall` and
 * `address` are set where they apply. A message that says `errno N` gets the name beside the number.
 */
export class UffdError extends SbxError<UffdErrorCode> {
  static override readonly errorScope = "uffd";
  override readonly name = "UffdError";
  readonly errno: number | undefined;
  /** `errno`'s name ("EEXIST"), when it has one. */
  readonly errnoName: string | undefined;
  readonly syscall: string | undefined;
  readonly address: number | undefined;

  constructor(code: UffdErrorCode, message: string, options: UffdErrorOptions = {}) {
    const name = options.errno === undefined ? undefined : errnoName(options.errno);
    super(code, name === undefined ? message : withErrnoName(message, options.errno ?? 0, name), options);
    this.errno = options.errno;
    this.errnoName = name;
    this.syscall = options.syscall;
    this.address = options.address;
  }
}

// "errno 17" → "errno 17 (EEXIST)", once: an error rebuilt from another's message (the fault worker's,
// across the thread boundary) already has the name.
function withErrnoName(message: string, errno: number, name: string): string {
  if (message.includes(name)) return message;
  return message.replace(new RegExp(`\\berrno ${errno}\\b`), `errno ${errno} (${name})`);
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
