import { SbxError, type SbxErrorOptions } from "@sbx/arch";

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

/** Codes of the process launcher and its helpers (console, vsock, metrics, jail, the test guest builder). */
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
  | "GUEST_BUILD_FAILED"
  | "JAIL_SETUP_FAILED"
  | "CGROUP_UNAVAILABLE";

/** Every code an @sbx/fc-client error carries. */
export type FirecrackerErrorCode = FirecrackerClientErrorCode | FirecrackerLaunchErrorCode;

/**
 * The one error class of @sbx/fc-client. `code` is stable; subclasses add the fields their codes carry
 * (`FirecrackerApiError`, `FirecrackerVersionError`, `FirecrackerLaunchError`), so
 * `FirecrackerError.isInstance` (or `instanceof`, within one copy of the package) catches every error
 * this package throws, and each subclass's `isInstance` only its own.
 */
export class FirecrackerError extends SbxError<FirecrackerErrorCode> {
  // Typed as string so the subclasses' own scopes can override it.
  static override readonly errorScope: string = "fc-client";
  override name = "FirecrackerError";
}

/** A non-2xx answer from the Firecracker API; `faultMessage` is Firecracker's own explanation. */
export class FirecrackerApiError extends FirecrackerError {
  static override readonly errorScope: string = "fc-client.api";
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
    faultMessage?: string | undefined;
    cause?: unknown;
  }) {
    super(
      "API_ERROR",
      `Firecracker answered ${options.status} to ${options.method} ${options.path}${options.faultMessage ? `: ${options.faultMessage}` : " (no fault_message)"}`,
      {
        cause: options.cause,
        details: { status: options.status, method: options.method, path: options.path },
      },
    );
    this.status = options.status;
    this.method = options.method;
    this.path = options.path;
    this.faultMessage = options.faultMessage;
  }
}

/** A call or field the running Firecracker does not have, refused before sending. */
export class FirecrackerVersionError extends FirecrackerError {
  static override readonly errorScope: string = "fc-client.version";
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
      { details: { ...options } },
    );
    this.operation = options.operation;
    this.field = options.field;
    this.version = options.version;
    this.minimumVersion = options.minimumVersion;
  }
}

/**
 * The error of the Firecracker process launcher and its helpers (console, vsock, metrics, the test
 * guest builder). `code` is stable; `exitCode`/`signal`/`output` are set when the process died.
 */
export class FirecrackerLaunchError extends FirecrackerError {
  static override readonly errorScope: string = "fc-client.launch";
  override name = "FirecrackerLaunchError";
  declare readonly code: FirecrackerLaunchErrorCode;
  /** Exit status of the Firecracker process, when it exited. */
  readonly exitCode: number | null;
  /** Signal that ended the Firecracker process, when one did. */
  readonly signal: NodeJS.Signals | null;
  /** The last lines Firecracker printed (stdout and stderr), oldest first. */
  readonly output: readonly string[];

  constructor(
    code: FirecrackerLaunchErrorCode,
    message: string,
    options: SbxErrorOptions & {
      exitCode?: number | null;
      signal?: NodeJS.Signals | null;
      output?: readonly string[];
    } = {},
  ) {
    super(code, message, options);
    this.exitCode = options.exitCode ?? null;
    this.signal = options.signal ?? null;
    this.output = Object.freeze([...(options.output ?? [])]);
  }
}
