import { spawn } from "node:child_process";
import { ArchError } from "./errors.ts";

/** Options of `runCommand`. */
export interface RunCommandOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Kill the process (SIGKILL) after this many milliseconds. Default 10 minutes. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Written to the command's stdin, which is then closed; without it stdin is closed at once. */
  input?: string;
  /** Called with each stdout chunk as it arrives (the chunk is still collected). */
  onStdout?: (chunk: string) => void;
  /** Cap on collected output per stream; the tail is kept. Default 4 MiB. */
  maxOutputBytes?: number;
  /**
   * Reject with `COMMAND_FAILED` unless the command exits 0 (the default). `false` resolves with any
   * exit status, for callers that read it (e2fsck's bit mask, apt-get's retry).
   */
  check?: boolean;
  /**
   * Turns a `TOOL_MISSING` or `COMMAND_FAILED` failure into the caller's own error (keep it as `cause`),
   * so a package's callers still catch one error class.
   */
  toError?: (failure: ArchError) => Error;
}

/** What a command did: its exit status or signal and its collected output. */
export interface CommandResult {
  /** Exit status; `null` when the process was killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `argv` without a shell and collects its output. Rejects with `TOOL_MISSING` when the program
 * does not exist, and with `COMMAND_FAILED` (carrying `argv`, `code`, `signal`, `stdout`, `stderr` in
 * `details`) on timeout, on abort and, unless `check: false`, on a non-zero exit.
 */
export function runCommand(argv: readonly string[], options: RunCommandOptions = {}): Promise<CommandResult> {
  const [command, ...args] = argv;
  if (!command) return Promise.reject(new ArchError("INVALID_OPTIONS", "runCommand needs a command"));
  const timeoutMs = options.timeoutMs ?? 600_000;
  const maxOutput = options.maxOutputBytes ?? 4 * 1024 * 1024;
  const toError = options.toError ?? ((failure: ArchError) => failure);
  return new Promise((resolve, fail) => {
    const reject = (failure: ArchError) => fail(toError(failure));
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    let killedFor: string | undefined;
    const keep = (text: string) => (text.length > maxOutput ? text.slice(-maxOutput) : text);
    child.stdout.setEncoding("utf8");
    child.stderr.setEncoding("utf8");
    child.stdout.on("data", (chunk: string) => {
      stdout = keep(stdout + chunk);
      options.onStdout?.(chunk);
    });
    child.stderr.on("data", (chunk: string) => {
      stderr = keep(stderr + chunk);
    });
    // A command that exits without reading all of its input closes the pipe: that is its exit
    // status's business, not an error of ours. Without input, stdin is closed at once (end of file).
    child.stdin.on("error", () => undefined);
    child.stdin.end(options.input);
    const kill = (reason: string) => {
      killedFor ??= reason;
      child.kill("SIGKILL");
    };
    const timer = setTimeout(() => kill(`did not finish within ${timeoutMs} ms and was killed`), timeoutMs);
    const onAbort = () => kill("was aborted");
    options.signal?.addEventListener("abort", onAbort, { once: true });
    if (options.signal?.aborted) onAbort();
    const settle = () => {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
    };
    child.on("error", (cause: NodeJS.ErrnoException) => {
      settle();
      reject(
        cause.code === "ENOENT"
          ? new ArchError(
              "TOOL_MISSING",
              `${command} is not installed or not on PATH; install it (see scripts/apt-packages.txt)`,
              { cause, details: { command } },
            )
          : new ArchError("COMMAND_FAILED", `cannot run ${command}: ${cause.message}`, {
              cause,
              details: { argv: [...argv] },
            }),
      );
    });
    child.on("close", (code, signal) => {
      settle();
      const result = { code, signal, stdout, stderr };
      const failure =
        killedFor ?? (options.check !== false && code !== 0 ? `exited with ${code ?? signal}` : undefined);
      if (failure === undefined) {
        resolve(result);
        return;
      }
      reject(
        new ArchError(
          "COMMAND_FAILED",
          `${argv.join(" ")} ${failure}: ${stderr.trim() || stdout.trim()}`.replace(/: $/, ""),
          { details: { argv: [...argv], ...result } },
        ),
      );
    });
  });
}
