import { connect, type Socket } from "node:net";
import { FirecrackerLaunchError } from "./errors.ts";

/** Where `dialVsock` connects: the vsock's host socket and the guest port, with a timeout. */
export interface DialVsockOptions {
  /** The vsock device's `uds_path` on the host (as given to `PUT /vsock`). */
  udsPath: string;
  /** The guest port to connect to (a listener inside the guest). */
  port: number;
  /** Bound on connect + handshake; default 5000 ms. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** A connection to a guest port over Firecracker's hybrid vsock. */
export interface VsockConnection {
  /** The connected stream, positioned after the handshake; the caller owns (and must end) it. */
  socket: Socket;
  /** The host-side port Firecracker assigned, from `OK <port>`. */
  hostPort: number;
}

const MAX_HANDSHAKE_BYTES = 64;

/**
 * Opens a host-initiated vsock connection to a guest port through Firecracker's host-side Unix
 * socket: writes `CONNECT <port>\n` and expects `OK <host port>\n` (see Firecracker's vsock.md).
 * Bytes the guest sent right after the handshake stay readable on the returned socket.
 */
export function dialVsock(options: DialVsockOptions): Promise<VsockConnection> {
  const { udsPath, port } = options;
  if (!Number.isInteger(port) || port < 0 || port > 0xffffffff) {
    return Promise.reject(
      new FirecrackerLaunchError(
        "INVALID_OPTIONS",
        `vsock port must be an integer in 0..4294967295, got ${port}`,
      ),
    );
  }
  const timeoutMs = options.timeoutMs ?? 5000;
  return new Promise<VsockConnection>((resolve, reject) => {
    const socket = connect({ path: udsPath });
    let received = Buffer.alloc(0);
    let settled = false;
    const fail = (reason: string, cause?: unknown) => {
      if (settled) return;
      settled = true;
      cleanup();
      socket.destroy();
      reject(
        cause instanceof Error && cause.name === "AbortError"
          ? cause
          : new FirecrackerLaunchError(
              "VSOCK_CONNECT_FAILED",
              `vsock connect to guest port ${port} through ${udsPath} failed: ${reason}`,
              { cause, details: { udsPath, port } },
            ),
      );
    };
    const timer = setTimeout(
      () =>
        fail(`no "OK <port>" reply within ${timeoutMs} ms (is a guest process listening on port ${port}?)`),
      timeoutMs,
    );
    const onAbort = () => fail("aborted", options.signal?.reason);
    const onError = (error: Error) =>
      fail(
        (error as NodeJS.ErrnoException).code === "ENOENT"
          ? `${udsPath} does not exist (is the vsock device configured and Firecracker running?)`
          : error.message,
        error,
      );
    const onClose = () =>
      fail(
        `Firecracker closed the connection${received.length > 0 ? ` after ${JSON.stringify(received.toString("latin1"))}` : ""} (no guest listener on port ${port}?)`,
      );
    // Paused mode ("readable" + read()), so nothing is lost between the handshake and the caller's
    // first "data" listener: once the "readable" listener is gone the stream flows on demand again.
    const onReadable = () => {
      for (;;) {
        const chunk: Buffer | null = socket.read();
        if (chunk === null) return;
        received = Buffer.concat([received, chunk]);
        const newline = received.indexOf(0x0a);
        if (newline === -1) {
          if (received.length > MAX_HANDSHAKE_BYTES)
            return fail(`handshake reply too long: ${received.toString("latin1")}`);
          continue;
        }
        const line = received.subarray(0, newline).toString("latin1");
        const rest = received.subarray(newline + 1);
        const match = /^OK (\d+)$/.exec(line);
        if (!match) return fail(`unexpected handshake reply ${JSON.stringify(line)}`);
        settled = true;
        cleanup();
        if (rest.length > 0) socket.unshift(rest);
        resolve({ socket, hostPort: Number(match[1]) });
        return;
      }
    };
    const cleanup = () => {
      clearTimeout(timer);
      socket.off("readable", onReadable);
      socket.off("error", onError);
      socket.off("close", onClose);
      options.signal?.removeEventListener("abort", onAbort);
    };
    if (options.signal?.aborted) {
      onAbort();
      return;
    }
    options.signal?.addEventListener("abort", onAbort, { once: true });
    socket.on("error", onError);
    socket.on("close", onClose);
    socket.on("readable", onReadable);
    socket.once("connect", () => socket.write(`CONNECT ${port}\n`));
  });
}

/**
 * The host path on which Firecracker forwards guest-initiated connections to `port`:
 * `<uds_path>_<port>` (listen there before the guest connects).
 */
export function vsockListenPath(udsPath: string, port: number): string {
  return `${udsPath}_${port}`;
}
