// The wire format (docs/agent.md): a 12-byte header — payload length (u32 BE), stream id (u32 BE),
// kind (u8), channel (u8), two reserved zero bytes — then the payload. Control payloads are JSON.
import { z } from "zod";
import { AgentError } from "./errors.ts";

/** The protocol version both sides announce in the handshake. */
export const PROTOCOL_VERSION = 1;
/** Bytes of a frame header. */
export const FRAME_HEADER_BYTES = 12;
/** The agent's limit for any frame, both directions. */
export const MAX_FRAME_PAYLOAD = 1 << 20;
/** The agent's limit for a control frame from the host. */
export const MAX_CONTROL_PAYLOAD = 256 << 10;
export const MAX_STREAM_ID = 0x7fff_ffff;

/** What a frame carries: a control message, data, end of data, a window grant, or a cancel. */
export const FrameKind = { control: 1, data: 2, eof: 3, window: 4, cancel: 5 } as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];
/** Which of a process's streams a data frame belongs to. */
export const Channel = { stdin: 0, stdout: 1, stderr: 2 } as const;

/** One frame: the 12-byte header (length, stream, kind, channel) and its payload. */
export function encodeFrame(stream: number, kind: FrameKind, channel: number, payload?: Uint8Array): Buffer {
  const length = payload?.length ?? 0;
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + length);
  frame.writeUInt32BE(length, 0);
  frame.writeUInt32BE(stream, 4);
  frame[8] = kind;
  frame[9] = channel;
  frame[10] = 0;
  frame[11] = 0;
  if (payload) frame.set(payload, FRAME_HEADER_BYTES);
  return frame;
}

export function encodeControl(stream: number, message: unknown): Buffer {
  return encodeFrame(stream, FrameKind.control, 0, Buffer.from(JSON.stringify(message)));
}

export function encodeWindow(stream: number, bytes: number): Buffer {
  const payload = Buffer.allocUnsafe(4);
  payload.writeUInt32BE(bytes, 0);
  return encodeFrame(stream, FrameKind.window, 0, payload);
}

const statSchema = z.object({
  type: z.enum(["file", "dir", "symlink", "other"]),
  size: z.number().int().nonnegative(),
  mode: z.number().int().min(0).max(0o7777),
  uid: z.number().int().nonnegative(),
  gid: z.number().int().nonnegative(),
  mtimeMs: z.number().int(),
});
/** What `files.stat` reports. */
export type FileStat = z.infer<typeof statSchema>;
export const fileStatSchema = statSchema;
export const directoryEntrySchema = statSchema.extend({ name: z.string().min(1).max(4096) });
/** One entry of `files.list`. */
export type DirectoryEntry = z.infer<typeof directoryEntrySchema>;

const int = z.number().int();
/** Every control message the agent may send. Unknown types and extra shapes are protocol errors. */
export const agentMessageSchema = z.discriminatedUnion("type", [
  z.object({
    type: z.literal("hello"),
    version: int,
    agent: z.string().max(64),
    machine: z.string().max(64),
    pid: int,
    maxFrame: int.positive(),
    maxControl: int.positive(),
    maxStreams: int.positive(),
    window: int.min(4096).max(16 << 20),
  }),
  z.object({
    type: z.literal("error"),
    code: z.string().max(64),
    errno: int,
    message: z.string().max(8192),
  }),
  z.object({ type: z.literal("started"), pid: int.positive(), pty: z.boolean() }),
  z.object({
    type: z.literal("exit"),
    pid: int.positive(),
    exitCode: int.min(0).max(255).nullable(),
    signal: int.min(1).max(64).nullable(),
  }),
  z.object({ type: z.literal("file"), stat: statSchema }),
  z.object({ type: z.literal("ready"), window: int.min(4096).max(16 << 20) }),
  z.object({ type: z.literal("entries"), entries: z.array(directoryEntrySchema).max(100_000) }),
  z
    .object({
      type: z.literal("result"),
      bytes: int.nonnegative().optional(),
      stat: statSchema.optional(),
      count: int.nonnegative().optional(),
      truncated: z.boolean().optional(),
      created: int.nonnegative().optional(),
      delivered: z.boolean().optional(),
      processes: z
        .array(
          z.object({
            pid: int.positive(),
            pty: z.boolean(),
            attached: z.boolean(),
            exited: z.boolean(),
            command: z.string().max(1024),
          }),
        )
        .max(4096)
        .optional(),
      version: z.string().max(64).optional(),
      uptimeMs: int.nonnegative().optional(),
      processCount: int.nonnegative().optional(),
      connections: int.nonnegative().optional(),
      epochMs: int.optional(),
    })
    .strict(),
]);
/** A control message in either direction, validated. */
export type AgentMessage = z.infer<typeof agentMessageSchema>;
export type HelloMessage = Extract<AgentMessage, { type: "hello" }>;

export type DecodedFrame =
  | { kind: "control"; stream: number; message: AgentMessage }
  | { kind: "data"; stream: number; channel: 1 | 2; data: Buffer }
  | { kind: "window"; stream: number; bytes: number };

/**
 * Incremental decoder for what the agent sends. Data payloads are handed on as they arrive (a 1 MiB
 * frame is never reassembled), control payloads are bounded before they are buffered, and anything
 * outside the format throws PROTOCOL_ERROR: the caller closes the connection.
 */
export class FrameDecoder {
  readonly #maxPayload: number;
  readonly #header = Buffer.alloc(FRAME_HEADER_BYTES);
  #headerFill = 0;
  #remaining = 0;
  #stream = 0;
  #kind = 0;
  #channel = 0;
  #control: Buffer[] = [];
  #inPayload = false;

  constructor(options: { maxPayload?: number } = {}) {
    this.#maxPayload = options.maxPayload ?? MAX_FRAME_PAYLOAD;
  }

  /** Feeds bytes; calls `emit` for each frame (or piece of a data frame) in order. */
  push(chunk: Buffer, emit: (frame: DecodedFrame) => void): void {
    let offset = 0;
    while (offset < chunk.length) {
      if (!this.#inPayload) {
        const take = Math.min(FRAME_HEADER_BYTES - this.#headerFill, chunk.length - offset);
        chunk.copy(this.#header, this.#headerFill, offset, offset + take);
        this.#headerFill += take;
        offset += take;
        if (this.#headerFill < FRAME_HEADER_BYTES) return;
        this.#headerFill = 0;
        this.#startFrame(emit);
        continue;
      }
      const take = Math.min(this.#remaining, chunk.length - offset);
      const piece = chunk.subarray(offset, offset + take);
      offset += take;
      this.#remaining -= take;
      if (this.#kind === FrameKind.data) {
        emit({ kind: "data", stream: this.#stream, channel: this.#channel as 1 | 2, data: piece });
      } else {
        this.#control.push(piece);
      }
      if (this.#remaining === 0) this.#endFrame(emit);
    }
  }

  #startFrame(emit: (frame: DecodedFrame) => void): void {
    const h = this.#header;
    const length = h.readUInt32BE(0);
    const stream = h.readUInt32BE(4);
    const kind = h[8] as number;
    const channel = h[9] as number;
    if (h[10] !== 0 || h[11] !== 0) throw protocolError("reserved header bytes are not zero");
    if (length > this.#maxPayload)
      throw protocolError(`frame of ${length} bytes exceeds ${this.#maxPayload}`);
    if (stream > MAX_STREAM_ID) throw protocolError(`stream id ${stream} is out of range`);
    switch (kind) {
      case FrameKind.control:
        if (channel !== 0 || length === 0) throw protocolError("control frames are non-empty, on channel 0");
        break;
      case FrameKind.data:
        if ((channel !== Channel.stdout && channel !== Channel.stderr) || stream === 0)
          throw protocolError(`data on channel ${channel} of stream ${stream}`);
        break;
      case FrameKind.window:
        if (channel !== 0 || length !== 4) throw protocolError("window frames carry 4 bytes on channel 0");
        break;
      default:
        throw protocolError(`frame kind ${kind} is not one the agent sends`);
    }
    this.#stream = stream;
    this.#kind = kind;
    this.#channel = channel;
    this.#remaining = length;
    this.#inPayload = length > 0;
    if (length === 0) this.#endFrame(emit);
  }

  #endFrame(emit: (frame: DecodedFrame) => void): void {
    this.#inPayload = false;
    if (this.#kind === FrameKind.data) return;
    const payload = this.#control.length === 1 ? (this.#control[0] as Buffer) : Buffer.concat(this.#control);
    this.#control = [];
    if (this.#kind === FrameKind.window) {
      const bytes = payload.readUInt32BE(0);
      emit({ kind: "window", stream: this.#stream, bytes });
      return;
    }
    emit({ kind: "control", stream: this.#stream, message: parseAgentMessage(payload) });
  }
}

export function parseAgentMessage(payload: Buffer): AgentMessage {
  let json: unknown;
  try {
    json = JSON.parse(payload.toString("utf8"));
  } catch (cause) {
    throw protocolError("a control frame is not JSON", cause);
  }
  const parsed = agentMessageSchema.safeParse(json);
  if (!parsed.success) throw protocolError(`unexpected control message: ${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

function protocolError(message: string, cause?: unknown): AgentError {
  return new AgentError("PROTOCOL_ERROR", `agent protocol: ${message}`, { cause });
}
