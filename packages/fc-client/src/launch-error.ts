export type FirecrackerLaunchErrorCode =
  | "INVALID_OPTIONS"
  | "BINARY_NOT_FOUND"
  | "BINARY_ARCH_MISMATCH"
  | "SPAWN_FAILED"
  | "EXITED_BEFORE_READY"
  | "READY_TIMEOUT"
  | "ABORTED"
  | "CONFIG_INVALID"
  | "CONSOLE_TIMEOUT"
  | "CONSOLE_CLOSED"
  | "CONFIGURE_FAILED"
  | "VSOCK_CONNECT_FAILED"
  | "METRICS_INVALID"
  | "GUEST_BUILD_FAILED";

/**
 * The error of the Firecracker process launcher and its helpers (console, vsock, metrics, the test
 * guest builder). `code` is stable; `exitCode`/`signal`/`output` are set when the process died.
 */
export class FirecrackerLaunchError extends Error {
  override readonly name = "FirecrackerLaunchError";
  readonly code: FirecrackerLaunchErrorCode;
  /** Exit status of the Firecracker process, when it exited. */
  readonly exitCode: number | null;
  /** Signal that ended the Firecracker process, when one did. */
  readonly signal: NodeJS.Signals | null;
  /** The last lines Firecracker printed (stdout and stderr), oldest first. */
  readonly output: readonly string[];
  readonly details: Readonly<Record<string, unknown>>;

  constructor(
    code: FirecrackerLaunchErrorCode,
    message: string,
    options: {
      cause?: unknown;
      exitCode?: number | null;
      signal?: NodeJS.Signals | null;
      output?: readonly string[];
      details?: Record<string, unknown>;
    } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.exitCode = options.exitCode ?? null;
    this.signal = options.signal ?? null;
    this.output = Object.freeze([...(options.output ?? [])]);
    this.details = Object.freeze({ ...options.details });
  }
}
