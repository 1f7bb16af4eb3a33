import { execFile } from "node:child_process";
import { OrchestratorError } from "./errors.ts";

export interface RunCommandOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Written to the command's stdin. */
  input?: string;
}

export interface CommandOutput {
  stdout: string;
  stderr: string;
}

/** Runs `argv` without a shell; COMMAND_FAILED carries the exit status and stderr. */
export function runCommand(argv: readonly string[], options: RunCommandOptions = {}): Promise<CommandOutput> {
  const [file, ...args] = argv;
  if (!file) throw new OrchestratorError("INVALID_OPTIONS", "runCommand needs a command");
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      args,
      {
        timeout: options.timeoutMs ?? 30_000,
        killSignal: "SIGKILL",
        maxBuffer: 16 * 1024 * 1024,
        encoding: "utf8",
        ...(options.signal ? { signal: options.signal } : {}),
      },
      (error, stdout, stderr) => {
        if (!error) {
          resolve({ stdout, stderr });
          return;
        }
        const failure = error as NodeJS.ErrnoException & { code?: unknown; killed?: boolean };
        const status =
          failure.code === "ENOENT"
            ? "is not installed (not found on PATH)"
            : failure.killed
              ? "timed out or was aborted"
              : `exited with ${String(failure.code ?? "an error")}`;
        reject(
          new OrchestratorError("COMMAND_FAILED", `${argv.join(" ")} ${status}: ${stderr.trim()}`, {
            cause: error,
            details: { argv: [...argv], stderr, stdout, exitCode: failure.code },
          }),
        );
      },
    );
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}
