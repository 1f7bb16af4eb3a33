import { constants } from "node:os";
import { z } from "zod";
import type { AgentClient } from "./client.ts";
import { agentErrorFrom } from "./client.ts";
import type { AgentConnection, StreamHandler } from "./connection.ts";
import { AgentError } from "./errors.ts";
import { OutputChannel } from "./output-channel.ts";
import { parseOptions } from "./transport.ts";

const userSchema = z.union([
  z.string().regex(/^[A-Za-z0-9._][A-Za-z0-9._-]{0,62}\$?$/),
  z.number().int().min(0).max(0x7fff_ffff),
]);
const envSchema = z.record(
  z
    .string()
    .min(1)
    .regex(/^[^=\0]+$/),
  z.string().regex(/^[^\0]*$/),
);

export const startOptionsSchema = z.object({
  env: envSchema.optional(),
  /** Absolute working directory; default the user's home. */
  cwd: z
    .string()
    .regex(/^\/[^\0]*$/)
    .optional(),
  /** A user name from the guest's /etc/passwd or a uid; default root. */
  user: userSchema.optional(),
  /** Run on a pseudo-terminal of this size; its output (stdout and stderr together) is `stdout`. */
  pty: z
    .object({ rows: z.number().int().min(1).max(4096), cols: z.number().int().min(1).max(4096) })
    .optional(),
  /** Keep stdin open for writeStdin (default true; false gives the process /dev/null). */
  stdin: z.boolean().default(true),
});
/** How a process starts: argv, env, cwd, user, PTY, and output callbacks. */
export type StartOptions = z.input<typeof startOptionsSchema> & {
  onStdout?: ((data: Buffer) => void) | undefined;
  onStderr?: ((data: Buffer) => void) | undefined;
};

export const runOptionsSchema = startOptionsSchema.extend({
  stdin: z.boolean().default(false),
  timeoutMs: z.number().int().positive().optional(),
  /** Output kept per stream in the result; more is passed to the callbacks but not kept. */
  maxOutputBytes: z
    .number()
    .int()
    .nonnegative()
    .default(64 << 20),
});
/** StartOptions plus a timeout, stdin and an abort signal for `commands.run`. */
export type RunOptions = z.input<typeof runOptionsSchema> & {
  onStdout?: ((data: Buffer) => void) | undefined;
  onStderr?: ((data: Buffer) => void) | undefined;
  signal?: AbortSignal;
};

/** How a process ended: its exit code, or the signal that killed it. */
export interface ExitStatus {
  /** The exit code, or null when a signal ended the process. */
  exitCode: number | null;
  /** The number of the signal that ended the process, or null. */
  signal: number | null;
}

/** A finished `commands.run`: how it ended and its whole stdout and stderr. */
export interface CommandResult extends ExitStatus {
  stdout: string;
  stderr: string;
  /** True when an output exceeded maxOutputBytes and its tail was not kept. */
  truncated: boolean;
}

/** A process the agent started: its pid, command, whether it has a PTY, a client attached, and has exited. */
export interface ProcessInfo {
  pid: number;
  command: string;
  pty: boolean;
  attached: boolean;
  exited: boolean;
}

/** A string runs under `/bin/sh -c`; an array is the argv as given. */
export type Command = string | readonly string[];

function argvOf(command: Command): string[] {
  const argv = typeof command === "string" ? ["/bin/sh", "-c", command] : [...command];
  if (argv.length === 0 || argv.some((arg) => arg.includes("\0"))) {
    throw new AgentError("INVALID_OPTIONS", "a command needs at least a program and no NUL bytes");
  }
  return argv;
}

function signalNumber(signal: NodeJS.Signals | number): number {
  const number = typeof signal === "number" ? signal : constants.signals[signal];
  if (!Number.isInteger(number) || number < 1 || number > 64) {
    throw new AgentError("INVALID_OPTIONS", `unknown signal ${String(signal)}`);
  }
  return number;
}

/** A process started (or attached to) in the guest. */
export class CommandHandle {
  readonly pid: number;
  /** Standard output (with a pty: everything the terminal printed). */
  readonly stdout: AsyncIterable<Buffer>;
  readonly stderr: AsyncIterable<Buffer>;
  readonly #client: AgentClient;
  readonly #out: OutputChannel;
  readonly #err: OutputChannel;
  readonly #exit: Promise<ExitStatus>;
  #settle!: (status: ExitStatus) => void;
  #fail!: (error: AgentError) => void;
  #connection: AgentConnection;
  #stream: number;
  #done = false;
  #detached = false;

  /** Use AgentClient.commands.start or .connect. */
  constructor(
    client: AgentClient,
    connection: AgentConnection,
    stream: number,
    pid: number,
    callbacks: Pick<StartOptions, "onStdout" | "onStderr">,
  ) {
    this.#client = client;
    this.#connection = connection;
    this.#stream = stream;
    this.pid = pid;
    const grant = (bytes: number) => this.#connection.grant(this.#stream, bytes);
    this.#out = new OutputChannel(grant, client.options.window, callbacks.onStdout);
    this.#err = new OutputChannel(grant, client.options.window, callbacks.onStderr);
    this.stdout = this.#out;
    this.stderr = this.#err;
    this.#exit = new Promise<ExitStatus>((resolve, reject) => {
      this.#settle = resolve;
      this.#fail = reject;
    });
    // wait() may never be called (a detached handle); its rejection is reported there, not as unhandled.
    this.#exit.catch(() => {});
  }

  /** Stream handler hooks (internal). */
  _deliver(channel: 1 | 2, data: Buffer): void {
    (channel === 1 ? this.#out : this.#err).push(data);
  }

  _rebind(connection: AgentConnection, stream: number): void {
    this.#connection = connection;
    this.#stream = stream;
  }

  _exited(status: ExitStatus): void {
    if (this.#done) return;
    this.#done = true;
    this.#connection.release(this.#stream);
    this.#out.end();
    this.#err.end();
    this.#settle(status);
  }

  _failed(error: AgentError): void {
    if (this.#done) return;
    this.#done = true;
    this.#connection.release(this.#stream);
    this.#out.end(error);
    this.#err.end(error);
    this.#fail(error);
  }

  /** The connection dropped: attach again on a new one (the agent kept the process and its output). */
  async _reattach(): Promise<void> {
    if (this.#done || this.#detached) return;
    try {
      await this.#client.commands._attachAgain(this);
    } catch (error) {
      this._failed(
        error instanceof AgentError
          ? error
          : new AgentError("CONNECTION_RESET", String(error), { cause: error }),
      );
    }
  }

  get exited(): boolean {
    return this.#done;
  }

  /** Resolves with the exit code or signal once the process ended and all its output arrived. */
  wait(): Promise<ExitStatus> {
    return this.#exit;
  }

  async writeStdin(data: string | Uint8Array): Promise<void> {
    await this.#connection.sendData(this.#stream, typeof data === "string" ? Buffer.from(data) : data);
  }

  /** Closes stdin (with a pty: sends the terminal's EOF character). */
  async closeStdin(): Promise<void> {
    this.#connection.sendEof(this.#stream);
  }

  /** Sends a signal to the process, or with `group` to its whole process group (its session). */
  async signal(signal: NodeJS.Signals | number, options: { group?: boolean } = {}): Promise<boolean> {
    const result = await this.#client.call(
      { op: "signal", pid: this.pid, signal: signalNumber(signal), group: options.group ?? false },
      { idempotent: true },
    );
    return result.delivered ?? false;
  }

  /** SIGKILL to the process group. */
  async kill(): Promise<void> {
    await this.signal("SIGKILL", { group: true });
  }

  async resize(size: { rows: number; cols: number }): Promise<void> {
    await this.#client.call(
      { op: "resize", pid: this.pid, rows: size.rows, cols: size.cols },
      { idempotent: true },
    );
  }

  /** Stops receiving this process's output; it keeps running and commands.connect(pid) attaches again. */
  detach(): void {
    if (this.#done) return;
    this.#detached = true;
    this.#connection.cancel(this.#stream);
    this._failed(new AgentError("DETACHED", `detached from process ${this.pid}`));
  }

  /** Kills the process unless it ended or was detached, and waits for it. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#done) return;
    await this.kill().catch(() => undefined);
    await this.#exit.catch(() => undefined);
  }
}

/** Running processes in the guest: `run` (to completion), `start` (a handle with streams), `list`, `connect`. */
export class Commands {
  readonly #client: AgentClient;

  constructor(client: AgentClient) {
    this.#client = client;
  }

  /** Starts a process and returns at once with a handle to its streams. */
  async start(command: Command, options: StartOptions = {}): Promise<CommandHandle> {
    const { onStdout, onStderr, ...rest } = options;
    const parsed = parseOptions(startOptionsSchema, rest, "commands.start");
    const request = {
      op: "exec",
      argv: argvOf(command),
      env: parsed.env ?? {},
      ...(parsed.cwd !== undefined && { cwd: parsed.cwd }),
      ...(parsed.user !== undefined && { user: parsed.user }),
      ...(parsed.pty !== undefined && { pty: parsed.pty }),
      stdin: parsed.stdin,
    };
    return await this.#open(request, { onStdout, onStderr });
  }

  /** Attaches to a process the agent runs (started by any client); output not yet read is delivered. */
  async connect(
    pid: number,
    callbacks: Pick<StartOptions, "onStdout" | "onStderr"> = {},
  ): Promise<CommandHandle> {
    if (!Number.isInteger(pid) || pid < 1)
      throw new AgentError("INVALID_OPTIONS", `pid ${pid} is not a process id`);
    return await this.#open({ op: "attach", pid }, callbacks);
  }

  async list(): Promise<ProcessInfo[]> {
    const result = await this.#client.call({ op: "ps" }, { idempotent: true });
    return result.processes ?? [];
  }

  /** Runs a command to completion and returns its exit status and output. */
  async run(command: Command, options: RunOptions = {}): Promise<CommandResult> {
    const { onStdout, onStderr, signal, ...rest } = options;
    const parsed = parseOptions(runOptionsSchema, rest, "commands.run");
    if (signal?.aborted) throw new AgentError("ABORTED", "commands.run was aborted before it started");
    const collected = { stdout: [] as Buffer[], stderr: [] as Buffer[], sizes: [0, 0], truncated: false };
    const collect = (index: 0 | 1, sink: Buffer[], callback?: (data: Buffer) => void) => (data: Buffer) => {
      callback?.(data);
      const room = parsed.maxOutputBytes - (collected.sizes[index] as number);
      if (room <= 0) {
        collected.truncated ||= data.length > 0;
        return;
      }
      const kept = data.length > room ? data.subarray(0, room) : data;
      if (kept.length < data.length) collected.truncated = true;
      sink.push(kept);
      collected.sizes[index] = (collected.sizes[index] as number) + kept.length;
    };
    const { timeoutMs, maxOutputBytes: _max, ...startOptions } = parsed;
    const handle = await this.start(command, {
      ...startOptions,
      onStdout: collect(0, collected.stdout, onStdout),
      onStderr: collect(1, collected.stderr, onStderr),
    });
    if (parsed.stdin) await handle.closeStdin();
    let stopped: AgentError | undefined;
    const stop = (error: AgentError) => {
      if (stopped || handle.exited) return;
      stopped = error;
      handle.kill().catch(() => undefined);
    };
    const timer =
      timeoutMs === undefined
        ? undefined
        : setTimeout(
            () =>
              stop(
                new AgentError(
                  "EXEC_TIMEOUT",
                  `${JSON.stringify(command)} ran longer than ${timeoutMs} ms and was killed`,
                ),
              ),
            timeoutMs,
          );
    const onAbort = () =>
      stop(new AgentError("ABORTED", `${JSON.stringify(command)} was aborted and killed`));
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const status = await handle.wait();
      const result: CommandResult = {
        ...status,
        stdout: Buffer.concat(collected.stdout).toString("utf8"),
        stderr: Buffer.concat(collected.stderr).toString("utf8"),
        truncated: collected.truncated,
      };
      if (stopped) {
        throw new AgentError(stopped.code, stopped.message, { details: { ...result, pid: handle.pid } });
      }
      return result;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
  }

  async #open(
    request: Record<string, unknown>,
    callbacks: Pick<StartOptions, "onStdout" | "onStderr">,
  ): Promise<CommandHandle> {
    const connection = await this.#client.connection();
    return await new Promise<CommandHandle>((resolve, reject) => {
      let handle: CommandHandle | undefined;
      let id = 0;
      const handler = processStreamHandler(
        () => handle,
        (pid) => {
          handle = new CommandHandle(this.#client, connection, id, pid, callbacks);
          resolve(handle);
        },
        (error) => {
          connection.release(id);
          reject(error);
        },
      );
      id = connection.request(request, handler);
    });
  }

  /** Attaches `handle` again on the current connection (after a reset). Internal. */
  async _attachAgain(handle: CommandHandle): Promise<void> {
    const connection = await this.#client.connection();
    await new Promise<void>((resolve, reject) => {
      let id = 0;
      const handler = processStreamHandler(
        () => handle,
        () => {
          // Synchronously, before the data frames that follow in the same read are delivered.
          handle._rebind(connection, id);
          resolve();
        },
        (error) => {
          connection.release(id);
          reject(error);
        },
      );
      id = connection.request({ op: "attach", pid: handle.pid }, handler);
    });
  }
}

/** Routes one process stream: `started` first, then output, then `exit` (or an error). */
function processStreamHandler(
  current: () => CommandHandle | undefined,
  onStarted: (pid: number) => void,
  onStartFailed: (error: AgentError) => void,
): StreamHandler {
  let started = false;
  return {
    onMessage(message) {
      const handle = current();
      if (!started) {
        if (message.type === "started") {
          started = true;
          onStarted(message.pid);
        } else if (message.type === "error") onStartFailed(agentErrorFrom(message));
        else onStartFailed(new AgentError("PROTOCOL_ERROR", `expected started, got ${message.type}`));
        return;
      }
      if (!handle) return;
      if (message.type === "exit") handle._exited({ exitCode: message.exitCode, signal: message.signal });
      else if (message.type === "error") handle._failed(agentErrorFrom(message));
      else handle._failed(new AgentError("PROTOCOL_ERROR", `unexpected ${message.type} on a process stream`));
    },
    onData(channel, data) {
      const handle = current();
      if (!started || !handle) throw new AgentError("PROTOCOL_ERROR", "process output before started");
      handle._deliver(channel, data);
    },
    onClose(error) {
      const handle = current();
      if (!started || !handle) onStartFailed(error);
      else if (error.code === "CONNECTION_RESET") void handle._reattach();
      else handle._failed(error);
    },
  };
}
