import type { FirecrackerLaunchErrorCode } from "./launch-error-codes.ts";

/** Codes of the API client; launcher codes are listed in `FirecrackerLaunchErrorCode`. */
export type FirecrackerClientErrorCode =
  /** The request failed its schema before anything was sent (a typo, a wrong type, a missing field). */
  | "INVALID_REQUEST"
  /** Firecracker answered with a non-2xx status. */
  | "API_ERROR"
  /** The running Firecracker version does not have this operation or field. */
  | "VERSION_UNSUPPORTED"
  /** The operation, field or value exists on another architecture only. */
  | "ARCH_UNSUPPORTED"
  /** The answer was not JSON, or not the shape the spec promises. */
  | "INVALID_RESPONSE"
  /** Connecting failed, or the socket closed before a whole answer arrived. */
  | "TRANSPORT"
  | "TIMEOUT"
  | "ABORTED";

export type FirecrackerErrorCode = FirecrackerClientErrorCode | FirecrackerLaunchErrorCode;

/**
 * The one error class of @sbx/fc-client. `code` is stable; subclasses add the fields their codes carry
 * (`FirecrackerApiError`, `FirecrackerVersionError`, `FirecrackerLaunchError`), so `instanceof
 * FirecrackerError` catches every error this package throws.
 */
export class FirecrackerError extends Error {
  override name = "FirecrackerError";
  readonly code: FirecrackerErrorCode;

  constructor(code: FirecrackerErrorCode, message: string, options: { cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
  }
}

/** A non-2xx answer from the Firecracker API; `faultMessage` is Firecracker's own explanation. */
export class FirecrackerApiError extends FirecrackerError {
  override name = "FirecrackerApiError";
  declare readonly code: "API_ERROR";
  readonly status: number;
  readonly method: string;
  readonly path: string;
  readonly faultMessage: string | undefined;

  constructor(options: {
    status: number;
    method: string;
    path: string;
    faultMessage?: string;
    cause?: unknown;
  }) {
    super(
      "API_ERROR",
      `Firecracker answered ${options.status} to ${options.method} ${options.path}${options.faultMessage ? `: ${options.faultMessage}` : " (no fault_message)"}`,
      { cause: options.cause },
    );
    this.status = options.status;
    this.method = options.method;
    this.path = options.path;
    this.faultMessage = options.faultMessage;
  }
}

/** A call or field the running Firecracker does not have, refused before sending. */
export class FirecrackerVersionError extends FirecrackerError {
  override name = "FirecrackerVersionError";
  declare readonly code: "VERSION_UNSUPPORTED";
  readonly operation: string;
  /** The field, when the operation exists but the field does not. */
  readonly field: string | undefined;
  readonly version: string;
  /** The first Firecracker minor version that has it ("1.16"). */
  readonly minimumVersion: string;

  constructor(options: { operation: string; field?: string; version: string; minimumVersion: string }) {
    const what = options.field ? `field "${options.field}" of ${options.operation}` : options.operation;
    super(
      "VERSION_UNSUPPORTED",
      `${what} needs Firecracker ${options.minimumVersion} or newer; the running Firecracker is ${options.version}. Upgrade Firecracker or leave it out.`,
    );
    this.operation = options.operation;
    this.field = options.field;
    this.version = options.version;
    this.minimumVersion = options.minimumVersion;
  }
}
