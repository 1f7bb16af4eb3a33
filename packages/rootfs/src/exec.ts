import { spawn } from "node:child_process";
import { RootfsError } from "./errors.ts";

export interface CommandResult {
  /** Exit status; `null` when the process was killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunCommandOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Kill the process (SIGKILL) after this many milliseconds. Default 10 minutes. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Called with each stdout chunk as it arrives (the chunk is still collected). */
  onStdout?: (chunk: string) => void;
  /** Cap on collected output per stream; the tail is kept. Default 4 MiB. */
  maxOutputBytes?: number;
}

/**
 * Runs a command without a shell and collects its output. Resolves with any exit status (callers
 * decide what a status means, e.g. e2fsck's bit mask); rejects with `TOOL_MISSING` when the
 * program does not exist, and `COMMAND_FAILED` on timeout or abort.
 */
export function runCommand(
  command: string,
  args: readonly string[],
  options: RunCommandOptions = {},
): Promise<CommandResult> {
  const timeoutMs = options.timeoutMs ?? 600_000;
  const maxOutput = options.maxOutputBytes ?? 4 * 1024 * 1024;
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    let failure: RootfsError | undefined;
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
    const kill = (reason: string) => {
      failure ??= new RootfsError("COMMAND_FAILED", `${command} ${reason}`, {
        details: { command, args: [...args] },
      });
      child.kill("SIGKILL");
    };
    const timer = setTimeout(() => kill(`did not finish within ${timeoutMs} ms and was killed`), timeoutMs);
    const onAbort = () => kill("was aborted");
    options.signal?.addEventListener("abort", onAbort, { once: true });
    if (options.signal?.aborted) onAbort();
    child.on("error", (cause: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      reject(
        cause.code === "ENOENT"
          ? new RootfsError(
              "TOOL_MISSING",
              `${command} is not installed or not on PATH; install it (see scripts/apt-packages.txt)`,
              { cause, details: { command } },
            )
          : new RootfsError("COMMAND_FAILED", `cannot run ${command}: ${cause.message}`, {
              cause,
              details: { command, args: [...args] },
            }),
      );
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      if (failure) reject(failure);
      else resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Runs a command and rejects with `COMMAND_FAILED` (carrying its stderr) unless it exits 0. */
export async function runChecked(
  command: string,
  args: readonly string[],
  options: RunCommandOptions = {},
): Promise<CommandResult> {
  const result = await runCommand(command, args, options);
  if (result.code !== 0) {
    throw new RootfsError(
      "COMMAND_FAILED",
      `${command} ${args.join(" ")} exited with ${result.code ?? result.signal}: ${result.stderr.trim() || result.stdout.trim()}`,
      { details: { command, args: [...args], code: result.code, stderr: result.stderr } },
    );
  }
  return result;
}
