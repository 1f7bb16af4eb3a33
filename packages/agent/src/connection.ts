// One connection to the agent: the hello, stream ids, flow control in both directions, and the end
// of every open stream when the connection goes away.
import type { Socket } from "node:net";
import { AgentError } from "./errors.ts";
import {
  type AgentMessage,
  Channel,
  type DecodedFrame,
  encodeControl,
  encodeFrame,
  encodeWindow,
  FrameDecoder,
  FrameKind,
  type HelloMessage,
  MAX_STREAM_ID,
  PROTOCOL_VERSION,
} from "./protocol.ts";
import { onSocketChunks, slabReaderOf } from "./slab-reader.ts";
import type { AgentTransport } from "./transport.ts";

export interface StreamHandler {
  /** A control message on this stream (the terminal ones are result, error and exit). */
  onMessage(message: AgentMessage): void;
  onData(channel: 1 | 2, data: Buffer): void;
  /** The connection ended while the stream was open. */
  onClose(error: AgentError): void;
}

interface StreamState {
  handler: StreamHandler;
  /** What the agent may still send us; going below zero is a protocol violation. */
  receiveCredit: number;
  /** Credit given back by the consumer but not yet sent to the agent. */
  ungranted: number;
  /** What we may still send the agent. */
  sendCredit: number;
  creditWaiters: (() => void)[];
}

export interface AgentConnectionOptions {
  /** Bytes the agent may send on one stream before the host has consumed them. */
  window: number;
  handshakeTimeoutMs: number;
  signal?: AbortSignal | undefined;
}

/** One handshaken connection to the agent: multiplexed streams with flow control, over any transport. */
export class AgentConnection {
  readonly hello: HelloMessage;
  readonly #socket: Socket;
  readonly #streams = new Map<number, StreamState>();
  readonly #closeListeners: ((error: AgentError) => void)[] = [];
  readonly #window: number;
  readonly #grantThreshold: number;
  #nextId = 1;
  #closeError: AgentError | undefined;

  private constructor(socket: Socket, hello: HelloMessage, window: number) {
    this.#socket = socket;
    this.hello = hello;
    this.#window = window;
    this.#grantThreshold = Math.max(1, Math.floor(window / 4));
  }

  static async open(transport: AgentTransport, options: AgentConnectionOptions): Promise<AgentConnection> {
    const socket = await transport.connect(options.signal);
    socket.setNoDelay?.(true);
    const decoder = new FrameDecoder();
    let connection: AgentConnection | undefined;
    return await new Promise<AgentConnection>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          fail(
            new AgentError(
              "AGENT_UNREACHABLE",
              `${transport.description}: no hello within ${options.handshakeTimeoutMs} ms`,
            ),
          ),
        options.handshakeTimeoutMs,
      );
      const fail = (error: AgentError) => {
        clearTimeout(timer);
        if (connection) connection.#close(error);
        else {
          socket.destroy();
          reject(error);
        }
      };
      onSocketChunks(socket, (chunk: Buffer) => {
        try {
          decoder.push(chunk, (frame) => {
            if (connection) {
              connection.#dispatch(frame);
              return;
            }
            if (frame.kind !== "control" || frame.stream !== 0) {
              throw new AgentError(
                "PROTOCOL_ERROR",
                `${transport.description}: the first frame is not the hello`,
              );
            }
            const message = frame.message;
            if (message.type === "error") {
              throw new AgentError(
                message.code === "UNSUPPORTED_VERSION" ? "UNSUPPORTED_VERSION" : "PROTOCOL_ERROR",
                `${transport.description}: the agent refused the hello: ${message.message}`,
              );
            }
            if (message.type !== "hello" || message.version !== PROTOCOL_VERSION) {
              throw new AgentError(
                "UNSUPPORTED_VERSION",
                `${transport.description}: agent speaks ${JSON.stringify(message)}`,
              );
            }
            clearTimeout(timer);
            connection = new AgentConnection(socket, message, options.window);
            resolve(connection);
          });
        } catch (error) {
          fail(
            error instanceof AgentError
              ? error
              : new AgentError("PROTOCOL_ERROR", `${transport.description}: ${String(error)}`, {
                  cause: error,
                }),
          );
        }
      });
      socket.on("error", () => {
        // "close" follows and carries the outcome.
      });
      socket.on("close", () =>
        fail(
          new AgentError("CONNECTION_RESET", `${transport.description}: the connection to the agent closed`),
        ),
      );
      if (!slabReaderOf(socket)) socket.resume();
      socket.write(encodeControl(0, { op: "hello", versions: [PROTOCOL_VERSION], window: options.window }));
    });
  }

  get isClosed(): boolean {
    return this.#closeError !== undefined;
  }

  onClose(listener: (error: AgentError) => void): void {
    if (this.#closeError) listener(this.#closeError);
    else this.#closeListeners.push(listener);
  }

  get openStreams(): number {
    return this.#streams.size;
  }

  /** Registers a stream and sends its request; the handler gets everything for that id. */
  request(message: Record<string, unknown>, handler: StreamHandler): number {
    if (this.#closeError) throw this.#closeError;
    if (this.#streams.size >= this.hello.maxStreams) {
      throw new AgentError(
        "TOO_MANY_STREAMS",
        `${this.hello.maxStreams} streams are already open on this connection`,
      );
    }
    const id = this.#nextId;
    // Ids are never reused on a connection, so a late frame for an ended stream cannot be misrouted.
    this.#nextId = id >= MAX_STREAM_ID ? 1 : id + 1;
    this.#streams.set(id, {
      handler,
      receiveCredit: this.#window,
      ungranted: 0,
      sendCredit: this.hello.window,
      creditWaiters: [],
    });
    this.#socket.write(encodeControl(id, message));
    return id;
  }

  /** Ends the host's bookkeeping for a stream after its terminal message (or a cancel). */
  release(id: number): void {
    const state = this.#streams.get(id);
    this.#streams.delete(id);
    for (const wake of state?.creditWaiters ?? []) wake();
  }

  /**
   * The consumer took `bytes` of the stream's output: let the agent send that much more. Grants go
   * out a quarter window at a time. That never stalls the agent: it runs out of credit only when a
   * whole window is in flight or taken, and then at least a quarter of it is waiting to be granted.
   * A grant per read (what a flush per event-loop turn amounts to under load) cost a write(2) per
   * 64 KiB, and on a veth or loopback that write runs the peer's receive path in this thread.
   */
  grant(id: number, bytes: number): void {
    const state = this.#streams.get(id);
    if (!state || bytes <= 0 || this.#closeError) return;
    state.receiveCredit += bytes;
    state.ungranted += bytes;
    if (state.ungranted >= this.#grantThreshold) this.#flushGrant(id, state);
  }

  #flushGrant(id: number, state: StreamState): void {
    if (state.ungranted === 0 || this.#closeError) return;
    this.#socket.write(encodeWindow(id, state.ungranted));
    state.ungranted = 0;
  }

  /** Sends stdin or file bytes, waiting for the agent's window and the socket's buffer. */
  async sendData(id: number, data: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < data.length) {
      const state = this.#streams.get(id);
      if (this.#closeError) throw this.#closeError;
      if (!state) throw new AgentError("CLOSED", "the stream ended before all data was sent");
      if (state.sendCredit <= 0) {
        await new Promise<void>((resolve) => state.creditWaiters.push(resolve));
        continue;
      }
      const take = Math.min(state.sendCredit, data.length - offset, this.hello.maxFrame);
      state.sendCredit -= take;
      const flushed = this.#socket.write(
        encodeFrame(id, FrameKind.data, Channel.stdin, data.subarray(offset, offset + take)),
      );
      offset += take;
      if (!flushed) await this.#drained();
    }
  }

  sendEof(id: number): void {
    if (!this.#closeError) this.#socket.write(encodeFrame(id, FrameKind.eof, 0));
  }

  /** Stops a stream: a process keeps running (detached), a file transfer ends. */
  cancel(id: number): void {
    if (!this.#closeError && this.#streams.has(id)) this.#socket.write(encodeFrame(id, FrameKind.cancel, 0));
    this.release(id);
  }

  #drained(): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.#socket.off("drain", done);
        this.#socket.off("close", done);
        resolve();
      };
      this.#socket.once("drain", done);
      this.#socket.once("close", done);
    });
  }

  #dispatch(frame: DecodedFrame): void {
    if (frame.stream === 0) {
      if (frame.kind === "control" && frame.message.type === "error") {
        throw new AgentError("PROTOCOL_ERROR", `the agent closed the connection: ${frame.message.message}`);
      }
      throw new AgentError("PROTOCOL_ERROR", "unexpected frame on stream 0");
    }
    const state = this.#streams.get(frame.stream);
    // Frames for a stream the host already ended (cancelled, or after its terminal message) are dropped.
    if (!state) return;
    switch (frame.kind) {
      case "control":
        state.handler.onMessage(frame.message);
        return;
      case "data":
        state.receiveCredit -= frame.data.length;
        if (state.receiveCredit < 0)
          throw new AgentError("PROTOCOL_ERROR", `stream ${frame.stream}: data beyond the window`);
        state.handler.onData(frame.channel, frame.data);
        return;
      case "window":
        state.sendCredit += frame.bytes;
        for (const wake of state.creditWaiters.splice(0)) wake();
        return;
    }
  }

  #close(error: AgentError): void {
    if (this.#closeError) return;
    this.#closeError = error;
    this.#socket.destroy();
    const streams = [...this.#streams.values()];
    this.#streams.clear();
    for (const state of streams) {
      for (const wake of state.creditWaiters) wake();
      state.handler.onClose(error);
    }
    for (const listener of this.#closeListeners.splice(0)) listener(error);
  }

  /** Ends the connection as a reset would: process handles on it attach again on the next one. */
  drop(): void {
    this.#close(new AgentError("CONNECTION_RESET", "the connection was dropped to reconnect"));
  }

  /** Closes the socket; open streams end with CLOSED. Processes in the guest keep running. */
  close(): Promise<void> {
    if (this.#socket.destroyed && this.#closeError) return Promise.resolve();
    return new Promise((resolve) => {
      this.#socket.once("close", () => resolve());
      this.#close(new AgentError("CLOSED", "the agent client was closed"));
      if (this.#socket.destroyed && this.#socket.closed) resolve();
    });
  }
}
