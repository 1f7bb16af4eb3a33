import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "@sbx/arch";
import { z } from "zod";
import { Commands } from "./commands.ts";
import { AgentConnection, type StreamHandler } from "./connection.ts";
import { AGENT_WIRE_ERROR_CODES, AgentError, type AgentErrorCode } from "./errors.ts";
import { Files } from "./files.ts";
import type { AgentMessage, HelloMessage } from "./protocol.ts";
import { type AgentTransport, parseOptions } from "./transport.ts";

/** How an AgentClient connects: its transport, window, timeouts and bounds. */
export const agentClientOptionsSchema = z.object({
  /** How long to keep trying to (re)connect before AGENT_UNREACHABLE. */
  connectTimeoutMs: z.number().int().positive().default(10_000),
  /** How long a connected agent may take to answer the hello. */
  handshakeTimeoutMs: z.number().int().positive().default(5_000),
  /** Bytes the agent may send on one stream before the host consumed them (flow-control window). */
  window: z
    .number()
    .int()
    .min(4096)
    .max(16 << 20)
    .default(4 << 20),
});
/** What `new AgentClient()` takes: agentClientOptionsSchema's fields and a logger. */
export type AgentClientOptions = z.input<typeof agentClientOptionsSchema> & { logger?: Logger };

/** What the agent reports about itself: version, uptime, processes, connections and the guest's clock. */
export interface HealthReport {
  version: string;
  uptimeMs: number;
  processCount: number;
  connections: number;
  /** The guest's wall clock when it answered. */
  epochMs: number;
}

/** Turns an agent `{"type":"error"}` frame into an AgentError. */
export function agentErrorFrom(message: Extract<AgentMessage, { type: "error" }>): AgentError {
  const code = (AGENT_WIRE_ERROR_CODES.has(message.code) ? message.code : "AGENT_ERROR") as AgentErrorCode;
  return new AgentError(code, message.message, {
    errno: message.errno || undefined,
    details: { agentCode: message.code },
  });
}

/**
 * The host side of the sbx agent. One connection at a time, opened on first use and opened again
 * transparently when it drops (a snapshot restore resets vsock connections): requests that are safe
 * to repeat are retried once, running processes are attached again, the rest fail with
 * CONNECTION_RESET.
 */
export class AgentClient {
  readonly commands: Commands;
  readonly files: Files;
  readonly transport: AgentTransport;
  readonly options: z.infer<typeof agentClientOptionsSchema>;
  readonly #logger: Logger | undefined;
  #connection: Promise<AgentConnection> | undefined;
  #closed = false;

  constructor(transport: AgentTransport, options: AgentClientOptions = {}) {
    const { logger, ...rest } = options;
    this.options = parseOptions(agentClientOptionsSchema, rest, "AgentClient");
    this.transport = transport;
    this.#logger = logger;
    this.commands = new Commands(this);
    this.files = new Files(this);
  }

  /** The live connection, connecting (with retries until connectTimeoutMs) when there is none. */
  async connection(signal?: AbortSignal): Promise<AgentConnection> {
    if (this.#closed) throw new AgentError("CLOSED", "the agent client was closed");
    const current = this.#connection;
    if (current) {
      const connection = await current.catch(() => undefined);
      if (connection && !connection.isClosed) return connection;
      if (this.#connection === current) this.#connection = undefined;
    }
    if (!this.#connection) {
      const pending = this.#connect(signal);
      this.#connection = pending;
      pending.catch(() => {
        if (this.#connection === pending) this.#connection = undefined;
      });
    }
    return await this.#connection;
  }

  async #connect(signal?: AbortSignal): Promise<AgentConnection> {
    const deadline = Date.now() + this.options.connectTimeoutMs;
    let delay = 20;
    let last: unknown;
    for (let attempt = 1; ; attempt++) {
      if (signal?.aborted) throw new AgentError("ABORTED", "connecting to the agent was aborted");
      try {
        const connection = await AgentConnection.open(this.transport, {
          window: this.options.window,
          handshakeTimeoutMs: this.options.handshakeTimeoutMs,
          signal,
        });
        this.#logger?.debug?.(
          { transport: this.transport.description, attempt, agent: connection.hello.agent },
          "agent connected",
        );
        return connection;
      } catch (error) {
        last = error;
        if (error instanceof AgentError && (error.code === "UNSUPPORTED_VERSION" || error.code === "ABORTED"))
          throw error;
      }
      if (Date.now() + delay > deadline) break;
      await sleep(delay);
      delay = Math.min(delay * 2, 500);
    }
    throw new AgentError(
      "AGENT_UNREACHABLE",
      `the agent at ${this.transport.description} did not answer within ${this.options.connectTimeoutMs} ms: ${last instanceof Error ? last.message : String(last)}`,
      { cause: last },
    );
  }

  /** What the connected agent said in its hello. */
  async hello(): Promise<HelloMessage> {
    return (await this.connection()).hello;
  }

  /**
   * Sends one request and collects its control messages until the terminal one. `idempotent`
   * requests are sent again once on a new connection when the first one dropped.
   */
  async call(
    request: Record<string, unknown>,
    options: { idempotent: boolean; signal?: AbortSignal; onMessage?: (message: AgentMessage) => void },
  ): Promise<Extract<AgentMessage, { type: "result" }>> {
    for (let attempt = 0; ; attempt++) {
      const connection = await this.connection(options.signal);
      try {
        return await new Promise((resolve, reject) => {
          let id = 0;
          const onAbort = () => {
            connection.cancel(id);
            reject(new AgentError("ABORTED", `${String(request.op)} was aborted`));
          };
          const handler: StreamHandler = {
            onMessage(message) {
              if (message.type === "result" || message.type === "error") {
                connection.release(id);
                options.signal?.removeEventListener("abort", onAbort);
                if (message.type === "result") resolve(message);
                else reject(agentErrorFrom(message));
              } else if (options.onMessage) options.onMessage(message);
              else {
                connection.cancel(id);
                reject(
                  new AgentError("PROTOCOL_ERROR", `unexpected ${message.type} for ${String(request.op)}`),
                );
              }
            },
            onData() {
              reject(new AgentError("PROTOCOL_ERROR", `unexpected data for ${String(request.op)}`));
            },
            onClose(error) {
              options.signal?.removeEventListener("abort", onAbort);
              reject(error);
            },
          };
          id = connection.request(request, handler);
          options.signal?.addEventListener("abort", onAbort, { once: true });
        });
      } catch (error) {
        const reset = error instanceof AgentError && error.code === "CONNECTION_RESET";
        if (!(reset && options.idempotent && attempt === 0)) throw error;
        this.#logger?.debug?.({ op: request.op }, "agent connection reset; retrying on a new connection");
      }
    }
  }

  async health(): Promise<HealthReport> {
    const result = await this.call({ op: "health" }, { idempotent: true });
    return {
      version: result.version ?? "",
      uptimeMs: result.uptimeMs ?? 0,
      processCount: result.processCount ?? 0,
      connections: result.connections ?? 0,
      epochMs: result.epochMs ?? 0,
    };
  }

  /** Sets the guest's wall clock (default: the host's now). */
  async setClock(date: Date = new Date()): Promise<void> {
    await this.call({ op: "clock", epochMs: date.getTime() }, { idempotent: true });
  }

  /** Credits fresh host randomness to the guest's pool and reseeds its CRNG (RNDADDENTROPY). */
  async reseedRandom(bytes: Uint8Array = randomBytes(64)): Promise<void> {
    if (bytes.length < 16 || bytes.length > 4096) {
      throw new AgentError("INVALID_OPTIONS", `reseedRandom takes 16..4096 bytes, not ${bytes.length}`);
    }
    await this.call({ op: "entropy", data: Buffer.from(bytes).toString("base64") }, { idempotent: true });
  }

  /**
   * Drops the current connection and opens a new one. After a snapshot restore the old one is dead
   * (Firecracker resets vsock connections) but the host may not have noticed yet; a request sent on
   * it would fail with CONNECTION_RESET. Running process handles attach again on the new connection.
   */
  async reconnect(): Promise<void> {
    const current = this.#connection;
    this.#connection = undefined;
    const connection = await current?.catch(() => undefined);
    connection?.drop();
    await this.connection();
  }

  /**
   * After every restore: a fresh connection, the host's clock and fresh randomness (clones of one
   * snapshot otherwise share the clock skew and the RNG state).
   */
  async afterRestore(): Promise<void> {
    await this.reconnect();
    await this.setClock();
    await this.reseedRandom();
  }

  /** Closes the connection. Processes in the guest keep running and can be attached to later. */
  async close(): Promise<void> {
    this.#closed = true;
    const current = this.#connection;
    this.#connection = undefined;
    const connection = await current?.catch(() => undefined);
    await connection?.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
