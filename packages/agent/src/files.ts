import type { Readable } from "node:stream";
import { z } from "zod";
import type { AgentClient } from "./client.ts";
import { agentErrorFrom } from "./client.ts";
import { AgentError } from "./errors.ts";
import { OutputChannel } from "./output-channel.ts";
import type { DirectoryEntry, FileStat } from "./protocol.ts";
import { parseOptions } from "./transport.ts";

const pathSchema = z
  .string()
  .regex(/^\/[^\0]*$/, "an absolute guest path without NUL")
  .max(4095);
const userSchema = z.union([
  z.string().regex(/^[A-Za-z0-9._][A-Za-z0-9._-]{0,62}\$?$/),
  z.number().int().min(0).max(0x7fff_ffff),
]);
const asUserSchema = z.object({ user: userSchema.optional() });
/** Options of every file operation: the guest user it runs as. */
export type FileOptions = z.input<typeof asUserSchema>;

const writeOptionsSchema = asUserSchema.extend({ mode: z.number().int().min(0).max(0o7777).optional() });
/** How a file is written: its mode and owner (always atomically, temp then rename). */
export type WriteOptions = z.input<typeof writeOptionsSchema>;
const readOptionsSchema = asUserSchema.extend({
  /** read() refuses files larger than this (readStream has no limit). */
  maxBytes: z
    .number()
    .int()
    .positive()
    .default(256 << 20),
});
/** Which part of a file to read, and the most to accept. */
export type ReadOptions = z.input<typeof readOptionsSchema>;

export type { DirectoryEntry, FileStat };

/** A file being read: its stat, and its chunks as they arrive. */
export interface FileReadStream extends AsyncIterable<Buffer> {
  readonly stat: FileStat;
}

function path(value: string, where: string): string {
  return parseOptions(pathSchema, value, where);
}

/** Files in the guest. Every operation runs with the given user's permissions (default root). */
export class Files {
  readonly #client: AgentClient;

  constructor(client: AgentClient) {
    this.#client = client;
  }

  async stat(guestPath: string, options: FileOptions & { followSymlinks?: boolean } = {}): Promise<FileStat> {
    const { user } = parseOptions(asUserSchema, { user: options.user }, "files.stat");
    const result = await this.#client.call(
      { op: "stat", path: path(guestPath, "files.stat"), user, follow: options.followSymlinks ?? true },
      { idempotent: true },
    );
    if (!result.stat) throw new AgentError("PROTOCOL_ERROR", "stat result without stat");
    return result.stat;
  }

  async exists(guestPath: string, options: FileOptions = {}): Promise<boolean> {
    try {
      await this.stat(guestPath, options);
      return true;
    } catch (error) {
      if (error instanceof AgentError && error.code === "FILE_NOT_FOUND") return false;
      throw error;
    }
  }

  async list(guestPath: string, options: FileOptions = {}): Promise<DirectoryEntry[]> {
    const { user } = parseOptions(asUserSchema, options, "files.list");
    const entries: DirectoryEntry[] = [];
    await this.#client.call(
      { op: "list", path: path(guestPath, "files.list"), user },
      {
        idempotent: true,
        onMessage: (message) => {
          if (message.type !== "entries")
            throw new AgentError("PROTOCOL_ERROR", `unexpected ${message.type} in a listing`);
          entries.push(...message.entries);
        },
      },
    );
    // A retried listing may repeat a chunk of the first attempt.
    return [...new Map(entries.map((entry) => [entry.name, entry])).values()];
  }

  /** mkdir -p; resolves to the number of directories created. */
  async mkdir(guestPath: string, options: FileOptions & { mode?: number } = {}): Promise<number> {
    const { user, mode } = parseOptions(writeOptionsSchema, options, "files.mkdir");
    const result = await this.#client.call(
      { op: "mkdir", path: path(guestPath, "files.mkdir"), user, ...(mode !== undefined && { mode }) },
      { idempotent: true },
    );
    return result.created ?? 0;
  }

  async remove(guestPath: string, options: FileOptions & { recursive?: boolean } = {}): Promise<void> {
    const { user } = parseOptions(asUserSchema, { user: options.user }, "files.remove");
    await this.#client.call(
      { op: "remove", path: path(guestPath, "files.remove"), user, recursive: options.recursive ?? false },
      { idempotent: false },
    );
  }

  async rename(from: string, to: string, options: FileOptions = {}): Promise<void> {
    const { user } = parseOptions(asUserSchema, options, "files.rename");
    await this.#client.call(
      { op: "rename", from: path(from, "files.rename"), to: path(to, "files.rename"), user },
      { idempotent: false },
    );
  }

  /** The whole file (up to maxBytes). */
  async read(guestPath: string, options: ReadOptions = {}): Promise<Buffer> {
    const { maxBytes, ...rest } = parseOptions(readOptionsSchema, options, "files.read");
    const stream = await this.readStream(guestPath, rest);
    if (stream.stat.size > maxBytes) {
      await drain(stream, 0).catch(() => undefined);
      throw new AgentError(
        "INVALID_OPTIONS",
        `${guestPath} has ${stream.stat.size} bytes, more than maxBytes ${maxBytes}`,
      );
    }
    const chunks: Buffer[] = [];
    await drain(stream, maxBytes, chunks);
    return Buffer.concat(chunks);
  }

  async readText(guestPath: string, options: ReadOptions = {}): Promise<string> {
    return (await this.read(guestPath, options)).toString("utf8");
  }

  /** Streams a file; the agent sends only as fast as the iterator consumes. */
  async readStream(guestPath: string, options: FileOptions = {}): Promise<FileReadStream> {
    const { user } = parseOptions(asUserSchema, options, "files.readStream");
    const connection = await this.#client.connection();
    return await new Promise<FileReadStream>((resolve, reject) => {
      let id = 0;
      let received = 0;
      let opened = false;
      const output = new OutputChannel((bytes) => connection.grant(id, bytes), this.#client.options.window);
      id = connection.request(
        { op: "read", path: path(guestPath, "files.readStream"), user },
        {
          onMessage(message) {
            if (!opened && message.type === "file") {
              opened = true;
              resolve(Object.assign(output, { stat: message.stat }));
              return;
            }
            connection.release(id);
            if (message.type === "error") {
              const error = agentErrorFrom(message);
              if (opened) output.end(error);
              else reject(error);
            } else if (message.type === "result" && opened) {
              if (message.bytes !== received) {
                output.end(
                  new AgentError(
                    "PROTOCOL_ERROR",
                    `read ${guestPath}: the agent reported ${message.bytes} bytes, sent ${received}`,
                  ),
                );
              } else output.end();
            } else {
              const error = new AgentError(
                "PROTOCOL_ERROR",
                `unexpected ${message.type} while reading ${guestPath}`,
              );
              if (opened) output.end(error);
              else reject(error);
            }
          },
          onData(_channel, data) {
            if (!opened) throw new AgentError("PROTOCOL_ERROR", "file data before the file message");
            received += data.length;
            output.push(data);
          },
          onClose(error) {
            if (opened) output.end(error);
            else reject(error);
          },
        },
      );
    });
  }

  /**
   * Writes a file atomically: the agent writes a temp file beside it, fsyncs and renames it over the
   * destination, so readers see the old content or the new, never a part. Resolves to the bytes written.
   */
  async write(
    guestPath: string,
    data: string | Uint8Array | AsyncIterable<Uint8Array> | Readable,
    options: WriteOptions = {},
  ): Promise<number> {
    const { user, mode } = parseOptions(writeOptionsSchema, options, "files.write");
    const connection = await this.#client.connection();
    let id = 0;
    let ready!: () => void;
    let fail!: (error: AgentError) => void;
    let done!: (bytes: number) => void;
    const readyPromise = new Promise<void>((resolve, reject) => {
      ready = resolve;
      fail = reject;
    });
    const result = new Promise<number>((resolve, reject) => {
      done = resolve;
      const previous = fail;
      fail = (error) => {
        previous(error);
        reject(error);
      };
    });
    result.catch(() => {});
    readyPromise.catch(() => {});
    id = connection.request(
      { op: "write", path: path(guestPath, "files.write"), user, ...(mode !== undefined && { mode }) },
      {
        onMessage(message) {
          if (message.type === "ready") {
            ready();
            return;
          }
          connection.release(id);
          if (message.type === "result") done(message.bytes ?? 0);
          else if (message.type === "error") fail(agentErrorFrom(message));
          else
            fail(new AgentError("PROTOCOL_ERROR", `unexpected ${message.type} while writing ${guestPath}`));
        },
        onData() {
          throw new AgentError("PROTOCOL_ERROR", "data on a write stream");
        },
        onClose: (error) => fail(error),
      },
    );
    await readyPromise;
    try {
      if (typeof data === "string" || data instanceof Uint8Array) {
        await connection.sendData(id, typeof data === "string" ? Buffer.from(data) : data);
      } else {
        for await (const chunk of data as AsyncIterable<Uint8Array | string>) {
          await connection.sendData(id, typeof chunk === "string" ? Buffer.from(chunk) : chunk);
        }
      }
    } catch (error) {
      // The agent removes its temp file when the stream is cancelled.
      connection.cancel(id);
      throw error;
    }
    connection.sendEof(id);
    return await result;
  }
}

async function drain(stream: AsyncIterable<Buffer>, maxBytes: number, into?: Buffer[]): Promise<void> {
  let total = 0;
  for await (const chunk of stream) {
    total += chunk.length;
    if (into && total <= maxBytes) into.push(chunk);
  }
}
