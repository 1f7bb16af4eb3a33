import { ArchError, type CommandResult, type RunCommandOptions, runCommand as run } from "@sbx/arch";
import { OrchestratorError } from "./errors.ts";

export type { CommandResult, RunCommandOptions };

/**
 * `@sbx/arch`'s `runCommand` (no shell; rejects unless the command exits 0), with its failures as
 * `OrchestratorError`s of the same code, message and details, so callers catch one class.
 */
export async function runCommand(
  argv: readonly string[],
  options: RunCommandOptions = {},
): Promise<CommandResult> {
  try {
    return await run(argv, { timeoutMs: 30_000, ...options });
  } catch (error) {
    if (!(error instanceof ArchError)) throw error;
    const code =
      error.code === "TOOL_MISSING" || error.code === "COMMAND_FAILED" ? "COMMAND_FAILED" : "INVALID_OPTIONS";
    throw new OrchestratorError(code, error.message, { cause: error, details: error.details });
  }
}
