import { FirecrackerError } from "./errors.ts";
import type { FirecrackerLaunchErrorCode } from "./launch-error-codes.ts";

export type { FirecrackerLaunchErrorCode };

/**
 * The error of the Firecracker process launcher and its helpers (console, vsock, metrics, the test
 * guest builder). `code` is stable; `exitCode`/`signal`/`output` are set when the process died.
 */
export class FirecrackerLaunchError extends FirecrackerError {
  override name = "FirecrackerLaunchError";
  declare readonly code: FirecrackerLaunchErrorCode;
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
    super(code, message, { cause: options.cause });
    this.exitCode = options.exitCode ?? null;
    this.signal = options.signal ?? null;
    this.output = Object.freeze([...(options.output ?? [])]);
    this.details = Object.freeze({ ...options.details });
  }
}
