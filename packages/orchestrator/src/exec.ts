import { type CommandResult, type RunCommandOptions, runCommand as runHostTool } from "@sbx/arch";
import { OrchestratorError } from "./errors.ts";

/** Host tools (ip, nft, tc, cp): 30 s unless told; any failure is COMMAND_FAILED, the ArchError its cause. */
export function runCommand(argv: readonly string[], options: RunCommandOptions = {}): Promise<CommandResult> {
  return runHostTool(argv, {
    timeoutMs: 30_000,
    ...options,
    toError: (failure) =>
      new OrchestratorError("COMMAND_FAILED", failure.message, { cause: failure, details: failure.details }),
  });
}
