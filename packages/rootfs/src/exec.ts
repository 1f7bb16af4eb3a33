import { type ArchError, type CommandResult, type RunCommandOptions, runCommand as runTool } from "@sbx/arch";
import { RootfsError } from "./errors.ts";

export type { CommandResult };

const asRootfsError = (failure: ArchError) =>
  new RootfsError(failure.code === "TOOL_MISSING" ? "TOOL_MISSING" : "COMMAND_FAILED", failure.message, {
    cause: failure,
    details: failure.details,
  });

/** mkfs.ext4, e2fsck, debugfs, dpkg, apt-get: run by `@sbx/arch`, failing as `RootfsError`s. */
export const runCommand = (
  argv: readonly string[],
  options: RunCommandOptions = {},
): Promise<CommandResult> => runTool(argv, { ...options, toError: asRootfsError });
