// How the host reaches the agent: Firecracker's hybrid vsock (a Unix socket on the host that takes
// `CONNECT <port>\n` and answers `OK <host port>\n`), TCP over the sandbox's network, or a plain Unix
// socket (tests, and agents run outside a VM).
import { connect, type NetConnectOpts, type Socket } from "node:net";
import { z } from "zod";
import { AgentError } from "./errors.ts";
import { attachSlabReader, slabReaderOf, slabReaderOptions } from "./slab-reader.ts";

/** How an AgentClient reaches the agent: a function that opens a connected socket. */
export interface AgentTransport {
  /** For messages: where this transport connects. */
  readonly description: string;
  /**
   * One new byte stream to the agent; rejects with AgentError("AGENT_UNREACHABLE" | "VSOCK_CONNECT_FAILED").
   * The built-in transports read through a SlabReader (slabReaderOf); a socket without one is read
   * through its "data" events.
   */
  connect(signal?: AbortSignal): Promise<Socket>;
}

const MAX_HANDSHAKE_LINE = 64;

function open(description: string, options: NetConnectOpts, signal?: AbortSignal): Promise<Socket> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new AgentError("ABORTED", `connecting to ${description} was aborted`));
      return;
    }
    const { reader, onread } = slabReaderOptions();
    const socket = connect({ ...options, onread });
    attachSlabReader(socket, reader);
    const onAbort = () => {
      socket.destroy();
      reject(new AgentError("ABORTED", `connecting to ${description} was aborted`));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    socket.once("connect", () => {
      signal?.removeEventListener("abort", onAbort);
      socket.removeAllListeners("error");
      resolve(socket);
    });
    socket.once("error", (cause) => {
      signal?.removeEventListener("abort", onAbort);
      reject(
        new AgentError(
          "AGENT_UNREACHABLE",
          `cannot connect to the agent at ${description}: ${cause.message}`,
          { cause },
        ),
      );
    });
  });
}

export const unixSocketTransportOptionsSchema = z.object({ path: z.string().min(1).max(107) });

/** A transport to an agent listening on a Unix socket. */
export function unixSocketTransport(input: z.input<typeof unixSocketTransportOptionsSchema>): AgentTransport {
  const { path } = parseOptions(unixSocketTransportOptionsSchema, input, "unixSocketTransport");
  const description = `unix:${path}`;
  return { description, connect: (signal) => open(description, { path }, signal) };
}

export const tcpTransportOptionsSchema = z.object({
  host: z.string().min(1),
  port: z.number().int().min(1).max(65535),
});

/** A transport to an agent listening on TCP (the fallback without vsock). */
export function tcpTransport(input: z.input<typeof tcpTransportOptionsSchema>): AgentTransport {
  const { host, port } = parseOptions(tcpTransportOptionsSchema, input, "tcpTransport");
  const description = `tcp:${host}:${port}`;
  return {
    description,
    async connect(signal) {
      const socket = await open(description, { host, port, noDelay: true }, signal);
      return socket;
    },
  };
}

export const firecrackerVsockTransportOptionsSchema = z.object({
  /** The `uds_path` given to Firecracker's `PUT /vsock`. */
  udsPath: z.string().min(1).max(107),
  /** The port the agent listens on inside the guest. */
  port: z.number().int().min(1).max(0xffff_fffe),
  handshakeTimeoutMs: z.number().int().positive().default(5000),
});

/**
 * Firecracker's hybrid vsock: connect to the host-side Unix socket, send `CONNECT <port>\n`, read
 * `OK <n>\n`. Firecracker closes the socket without a reply when nothing listens on the guest port
 * (the agent is not up yet, or is restarting): VSOCK_CONNECT_FAILED, which the client retries.
 */
export function firecrackerVsockTransport(
  input: z.input<typeof firecrackerVsockTransportOptionsSchema>,
): AgentTransport {
  const options = parseOptions(firecrackerVsockTransportOptionsSchema, input, "firecrackerVsockTransport");
  const description = `vsock:${options.udsPath}:${options.port}`;
  return {
    description,
    async connect(signal) {
      const socket = await open(description, { path: options.udsPath }, signal);
      try {
        await vsockHandshake(socket, options.port, options.handshakeTimeoutMs, description);
      } catch (error) {
        socket.destroy();
        throw error;
      }
      return socket;
    },
  };
}

function vsockHandshake(socket: Socket, port: number, timeoutMs: number, description: string): Promise<void> {
  const reader = slabReaderOf(socket);
  if (!reader) throw new AgentError("VSOCK_CONNECT_FAILED", `${description}: the socket has no reader`);
  return new Promise((resolve, reject) => {
    let line = Buffer.alloc(0);
    const fail = (message: string) => {
      cleanup();
      reject(new AgentError("VSOCK_CONNECT_FAILED", `${description}: ${message}`));
    };
    const timer = setTimeout(() => fail(`no reply to CONNECT within ${timeoutMs} ms`), timeoutMs);
    const onData = (chunk: Buffer) => {
      line = Buffer.concat([line, chunk]);
      const newline = line.indexOf(10);
      if (newline < 0) {
        if (line.length > MAX_HANDSHAKE_LINE) fail("the CONNECT reply is not a line");
        return;
      }
      const reply = line.subarray(0, newline).toString("latin1");
      const rest = line.subarray(newline + 1);
      if (!/^OK \d{1,10}$/.test(reply)) {
        fail(`unexpected CONNECT reply ${JSON.stringify(reply.slice(0, MAX_HANDSHAKE_LINE))}`);
        return;
      }
      cleanup();
      // Bytes after the reply already belong to the agent's stream: they wait for the connection.
      reader.unshift(rest);
      resolve();
    };
    const onClose = () => fail(`closed before OK (is the agent listening on vsock port ${port}?)`);
    const onError = (error: Error) => fail(error.message);
    const cleanup = () => {
      clearTimeout(timer);
      reader.release();
      socket.off("close", onClose);
      socket.off("error", onError);
    };
    reader.take(onData);
    socket.once("close", onClose);
    socket.once("error", onError);
    socket.write(`CONNECT ${port}\n`);
  });
}

export function parseOptions<T extends z.ZodType>(schema: T, input: unknown, where: string): z.infer<T> {
  const parsed = schema.safeParse(input);
  if (!parsed.success) {
    throw new AgentError("INVALID_OPTIONS", `${where}: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
    });
  }
  return parsed.data;
}
