import { ArchError, type CommandResult, type RunCommandOptions, runCommand as run } from "@sbx/arch";
import { RootfsError } from "./errors.ts";

export type { CommandResult, RunCommandOptions };

/**
 * `@sbx/arch`'s `runCommand` with its failures (`TOOL_MISSING`, `COMMAND_FAILED`) as `RootfsError`s of
 * the same code, message and details, so callers catch one class.
 */
export async function runCommand(
  argv: readonly string[],
  options: RunCommandOptions = {},
): Promise<CommandResult> {
  try {
    return await run(argv, options);
  } catch (error) {
    if (!(error instanceof ArchError)) throw error;
    const code =
      error.code === "TOOL_MISSING" || error.code === "COMMAND_FAILED" ? error.code : "INVALID_OPTIONS";
    throw new RootfsError(code, error.message, { cause: error, details: error.details });
  }
}
