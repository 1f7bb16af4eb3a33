import { ArchError } from "@sbx/arch";
import { describe, expect, it } from "vitest";
import { OrchestratorError } from "./errors.ts";
import { runCommand } from "./exec.ts";

describe("runCommand", () => {
  it("resolves with the output of a command that exits 0", async () => {
    expect(await runCommand(["sh", "-c", "cat; echo err >&2"], { input: "in\n" })).toMatchObject({
      code: 0,
      stdout: "in\n",
      stderr: "err\n",
    });
  });

  it("turns a failure into an OrchestratorError with the stderr and the arch error as cause", async () => {
    const failure = await runCommand(["sh", "-c", "echo broken >&2; exit 2"]).catch(
      (error: unknown) => error,
    );
    expect(failure).toBeInstanceOf(OrchestratorError);
    expect(failure).toMatchObject({ code: "COMMAND_FAILED", details: { code: 2, stderr: "broken\n" } });
    expect((failure as OrchestratorError).cause).toBeInstanceOf(ArchError);
    const missing = await runCommand(["sbx-no-such-tool"]).catch((error: unknown) => error);
    expect(missing).toMatchObject({ code: "COMMAND_FAILED", cause: { code: "TOOL_MISSING" } });
  });
});
