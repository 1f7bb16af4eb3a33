import { describe, expect, it } from "vitest";
import { RootfsError } from "./errors.ts";
import { runCommand } from "./exec.ts";

describe("runCommand", () => {
  it("resolves with any exit status when asked to, and fails as a RootfsError otherwise", async () => {
    expect(await runCommand(["sh", "-c", "exit 3"], { check: false })).toMatchObject({ code: 3 });
    const failure = await runCommand(["sh", "-c", "echo broken >&2; exit 1"]).catch(
      (error: unknown) => error,
    );
    expect(failure).toBeInstanceOf(RootfsError);
    expect(failure).toMatchObject({ code: "COMMAND_FAILED", message: expect.stringContaining("broken") });
    const missing = await runCommand(["sbx-no-such-tool"]).catch((error: unknown) => error);
    expect(missing).toBeInstanceOf(RootfsError);
    expect(missing).toMatchObject({ code: "TOOL_MISSING" });
  });
});
