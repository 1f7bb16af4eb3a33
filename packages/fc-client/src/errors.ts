// PROVISIONAL (written by the launcher helper so the package builds; the API-client helper owns this file).

/** A non-2xx answer from the Firecracker API. */
export class FirecrackerApiError extends Error {
  override readonly name = "FirecrackerApiError";
  readonly code = "API_ERROR" as const;
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
      `Firecracker answered ${options.status} to ${options.method} ${options.path}${options.faultMessage ? `: ${options.faultMessage}` : ""}`,
      options.cause === undefined ? undefined : { cause: options.cause },
    );
    this.status = options.status;
    this.method = options.method;
    this.path = options.path;
    this.faultMessage = options.faultMessage;
  }
}
