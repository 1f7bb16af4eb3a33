// HTTP/1.1 over the API socket, written for this one peer. Firecracker's API server speaks a small,
// fixed subset of HTTP/1.1 (one request at a time per connection, Content-Length bodies), and a
// general-purpose client pays for what it does not use: the benchmark measured node:http at ~0.4 and
// undici at ~0.55 of a hand-written request's throughput on the same socket. This keeps keep-alive
// connections in a small idle pool and reads answers by Content-Length (chunked and close-delimited
// answers are read too, for proxies and fakes that send them).
import { connect, type Socket } from "node:net";
import { FirecrackerError } from "./errors.ts";

export interface RawResponse {
  status: number;
  text: string;
}

export interface SendOptions {
  timeoutMs: number;
  signal?: AbortSignal | undefined;
}

const MAX_HEADER_BYTES = 64 * 1024;
const MAX_BODY_BYTES = 64 * 1024 * 1024;
const MAX_IDLE_CONNECTIONS = 8;
const METHOD = /^[A-Z]+$/;
const HEADER_END = Buffer.from("\r\n\r\n");
const STATUS_LINE = /^HTTP\/1\.[01] (\d{3})/;
const DIGITS = /^\d+$/;
// A request target without spaces or control characters: nothing can be smuggled into the header block.
const PATH = /^\/[\x21-\x7e]*$/;

export class SocketTransport {
  readonly socketPath: string;
  readonly #idle: Connection[] = [];
  #closed = false;

  constructor(socketPath: string) {
    this.socketPath = socketPath;
  }

  async send(
    method: string,
    path: string,
    body: string | undefined,
    options: SendOptions,
  ): Promise<RawResponse> {
    const what = `${method} ${path}`;
    if (!METHOD.test(method) || !PATH.test(path))
      throw new FirecrackerError("INVALID_REQUEST", `${JSON.stringify(what)} is not a valid request line`);
    if (this.#closed) throw new FirecrackerError("TRANSPORT", `${what}: the client is closed`);
    if (options.signal?.aborted)
      throw new FirecrackerError("ABORTED", `${what} was aborted before it was sent`);
    const head =
      body === undefined
        ? `${method} ${path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n`
        : `${method} ${path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
    let reused = this.#idle.pop();
    while (reused && !reused.reusable) {
      reused.destroy();
      reused = this.#idle.pop();
    }
    const connection = reused ?? new Connection(this.socketPath);
    try {
      const response = await connection.exchange(what, head, options);
      if (connection.reusable && !this.#closed && this.#idle.length < MAX_IDLE_CONNECTIONS)
        this.#idle.push(connection);
      else connection.destroy();
      return response;
    } catch (error) {
      connection.destroy();
      // A kept-alive connection the server closed while idle fails before any byte of the answer; a GET
      // is safe to send again on a fresh connection. Anything else may have had effects: report it.
      if (
        reused &&
        method === "GET" &&
        error instanceof FirecrackerError &&
        error.code === "TRANSPORT" &&
        !connection.answered
      )
        return this.send(method, path, body, options);
      throw error;
    }
  }

  close(): void {
    this.#closed = true;
    for (const connection of this.#idle.splice(0)) connection.destroy();
  }
}

interface Pending {
  what: string;
  resolve: (response: RawResponse) => void;
  reject: (error: FirecrackerError) => void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

class Connection {
  readonly #socket: Socket;
  readonly #socketPath: string;
  #connected = false;
  #pending: Pending | undefined;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #status = 0;
  #headerEnd = -1;
  #bodyLength: number | "chunked" | "until-close" = 0;
  #keepAlive = true;
  #destroyed = false;
  #timer: NodeJS.Timeout | undefined;
  /** When the timer fires (performance.now() time), or Infinity while none is armed. */
  #timerAt = Number.POSITIVE_INFINITY;
  /** When the request in flight times out, and the timeout it was given. */
  #deadline = 0;
  #timeoutMs = 0;
  /** Whether any byte of the current answer arrived. */
  answered = false;

  constructor(socketPath: string) {
    this.#socketPath = socketPath;
    this.#socket = connect(socketPath);
    this.#socket.setNoDelay(true);
    this.#socket.on("connect", () => {
      this.#connected = true;
    });
    this.#socket.on("data", (chunk: Buffer) => this.#onData(chunk));
    this.#socket.on("error", (cause: NodeJS.ErrnoException) => this.#onError(cause));
    this.#socket.on("close", () => this.#onClose());
  }

  get reusable(): boolean {
    return this.#keepAlive && !this.#destroyed;
  }

  exchange(what: string, request: string, options: SendOptions): Promise<RawResponse> {
    if (this.#destroyed)
      return Promise.reject(new FirecrackerError("TRANSPORT", `${what}: the connection is closed`));
    return new Promise<RawResponse>((resolve, reject) => {
      // A request only records its deadline; the connection's one timer is re-armed when it fires
      // early (a later request moved the deadline) or when a request needs it sooner. Re-arming a timer
      // for every call was a measurable share of a request's cost.
      this.#timeoutMs = options.timeoutMs;
      this.#deadline = performance.now() + options.timeoutMs;
      if (this.#deadline < this.#timerAt) this.#armTimer(this.#deadline);
      const pending: Pending = { what, resolve, reject, signal: options.signal, onAbort: undefined };
      const signal = options.signal;
      if (signal) {
        pending.onAbort = () =>
          this.#fail(new FirecrackerError("ABORTED", `${what} was aborted`, { cause: signal.reason }));
        signal.addEventListener("abort", pending.onAbort, { once: true });
      }
      this.#pending = pending;
      this.#chunks.length = 0;
      this.#buffered = 0;
      this.#headerEnd = -1;
      this.answered = false;
      this.#socket.write(request);
    });
  }

  /** The request in flight, detached from this connection's timer and its AbortSignal. */
  #take(): Pending | undefined {
    const pending = this.#pending;
    if (!pending) return undefined;
    this.#pending = undefined;
    if (pending.signal && pending.onAbort) pending.signal.removeEventListener("abort", pending.onAbort);
    return pending;
  }

  destroy(): void {
    this.#destroyed = true;
    clearTimeout(this.#timer);
    this.#socket.destroy();
  }

  #armTimer(at: number): void {
    clearTimeout(this.#timer);
    this.#timerAt = at;
    // Unref'd for good: the socket keeps the process alive while a request is in flight.
    this.#timer = setTimeout(() => this.#onTimer(), Math.max(0, at - performance.now())).unref();
  }

  #onTimer(): void {
    this.#timerAt = Number.POSITIVE_INFINITY;
    if (!this.#pending) return;
    if (performance.now() < this.#deadline) this.#armTimer(this.#deadline);
    else this.#onTimeout();
  }

  #onTimeout(): void {
    const pending = this.#pending;
    if (pending)
      this.#fail(
        new FirecrackerError("TIMEOUT", `${pending.what} got no answer within ${this.#timeoutMs} ms`),
      );
  }

  #fail(error: FirecrackerError): void {
    const pending = this.#take();
    this.destroy();
    pending?.reject(error);
  }

  #onError(cause: NodeJS.ErrnoException): void {
    const what = this.#pending?.what ?? "request";
    const hint = !this.#connected
      ? `cannot connect to ${this.#socketPath} (${cause.code ?? cause.message}): is Firecracker running with this --api-sock?`
      : `the API socket failed (${cause.code ?? cause.message})`;
    this.#fail(new FirecrackerError("TRANSPORT", `${what}: ${hint}`, { cause }));
  }

  #onClose(): void {
    this.#destroyed = true;
    if (!this.#pending) return;
    if (this.#bodyLength === "until-close" && this.#headerEnd >= 0) {
      this.#complete(this.#buffered);
      return;
    }
    this.#fail(
      new FirecrackerError(
        "TRANSPORT",
        `${this.#pending.what}: the API socket closed before the whole answer arrived (did Firecracker exit?)`,
      ),
    );
  }

  #onData(chunk: Buffer): void {
    if (!this.#pending) {
      // Bytes nobody asked for: the stream is out of step, so it must not be reused.
      this.destroy();
      return;
    }
    this.answered = true;
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    if (this.#buffered > MAX_HEADER_BYTES + MAX_BODY_BYTES) {
      this.#invalid("answer too large");
      return;
    }
    if (this.#headerEnd < 0 && !this.#parseHead()) return;
    if (this.#bodyLength === "until-close") return;
    if (this.#bodyLength === "chunked") {
      const text = this.#dechunk();
      if (text !== undefined) this.#finish(text);
      return;
    }
    const end = this.#headerEnd + this.#bodyLength;
    if (this.#buffered >= end) this.#complete(end);
  }

  /** Reads the status line and headers once they are all here; false while they are not. */
  #parseHead(): boolean {
    const data = this.#joined();
    const end = data.indexOf(HEADER_END);
    if (end < 0) {
      if (data.length > MAX_HEADER_BYTES) this.#invalid(`headers longer than ${MAX_HEADER_BYTES} bytes`);
      return false;
    }
    // One lower-cased string for the whole block, searched for the three headers that matter: this runs
    // for every answer, and splitting it into lines cost more than the rest of the exchange's parsing.
    const head = data.toString("latin1", 0, end);
    const status = STATUS_LINE.exec(head);
    if (!status) {
      const firstLine = head.split("\r\n", 1)[0] ?? "";
      this.#invalid(`not an HTTP answer: ${JSON.stringify(firstLine.slice(0, 80))}`);
      return false;
    }
    this.#status = Number(status[1]);
    this.#headerEnd = end + 4;
    const headers = head.toLowerCase();
    const lengthText = headerValue(headers, "\r\ncontent-length:");
    const chunked = headerValue(headers, "\r\ntransfer-encoding:")?.includes("chunked") ?? false;
    const connection = headerValue(headers, "\r\nconnection:");
    if (connection !== undefined) this.#keepAlive = connection !== "close";
    if (this.#status === 204 || this.#status === 304) this.#bodyLength = 0;
    else if (chunked) this.#bodyLength = "chunked";
    else if (lengthText !== undefined) {
      const length = DIGITS.test(lengthText) ? Number(lengthText) : Number.NaN;
      if (!Number.isSafeInteger(length) || length > MAX_BODY_BYTES) {
        this.#invalid(`bad Content-Length ${lengthText}`);
        return false;
      }
      this.#bodyLength = length;
    } else {
      this.#bodyLength = "until-close";
      this.#keepAlive = false;
    }
    return true;
  }

  #dechunk(): string | undefined {
    const data = this.#joined();
    const parts: Buffer[] = [];
    let at = this.#headerEnd;
    for (;;) {
      const lineEnd = data.indexOf("\r\n", at);
      if (lineEnd < 0) return undefined;
      const size = Number.parseInt(data.toString("latin1", at, lineEnd), 16);
      if (!Number.isSafeInteger(size) || size < 0 || size > MAX_BODY_BYTES) {
        this.#invalid("bad chunk size");
        return undefined;
      }
      if (size === 0)
        return data.indexOf("\r\n", lineEnd + 2) < 0 ? undefined : Buffer.concat(parts).toString("utf8");
      if (data.length < lineEnd + 2 + size + 2) return undefined;
      parts.push(data.subarray(lineEnd + 2, lineEnd + 2 + size));
      at = lineEnd + 2 + size + 2;
    }
  }

  #complete(end: number): void {
    const data = this.#joined();
    if (end < data.length) this.#keepAlive = false; // more bytes than announced: never reuse this stream
    this.#finish(data.toString("utf8", this.#headerEnd, end));
  }

  #finish(text: string): void {
    if (this.#buffered - this.#headerEnd > MAX_BODY_BYTES) {
      this.#invalid("answer too large");
      return;
    }
    const pending = this.#take();
    this.#chunks.length = 0;
    this.#buffered = 0;
    pending?.resolve({ status: this.#status, text });
  }

  #invalid(reason: string): void {
    this.#fail(new FirecrackerError("INVALID_RESPONSE", `${this.#pending?.what ?? "request"}: ${reason}`));
  }

  #joined(): Buffer {
    if (this.#chunks.length > 1) this.#chunks = [Buffer.concat(this.#chunks)];
    return this.#chunks[0] ?? Buffer.alloc(0);
  }
}

/** The trimmed value of the first header `name` (given as "\r\nname:", lower case), or undefined. */
function headerValue(headers: string, name: string): string | undefined {
  const at = headers.indexOf(name);
  if (at < 0) return undefined;
  const lineEnd = headers.indexOf("\r\n", at + name.length);
  return headers.slice(at + name.length, lineEnd < 0 ? undefined : lineEnd).trim();
}
