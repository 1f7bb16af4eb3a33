import { describe, expect, it } from "vitest";
import { runCommand } from "./run-command.ts";
import { childPids, openFdCount } from "./testing/index.ts";

describe("runCommand", () => {
  it("collects output, and with check: false any exit status, leaking no fds", async () => {
    const before = openFdCount();
    const result = await runCommand(["sh", "-c", "echo out; echo err >&2; exit 3"], { check: false });
    expect(result).toEqual({ code: 3, signal: null, stdout: "out\n", stderr: "err\n" });
    expect(openFdCount()).toBe(before);
  });

  it("rejects a non-zero exit with COMMAND_FAILED carrying argv, status and output", async () => {
    await expect(runCommand(["sh", "-c", "echo broken >&2; exit 1"])).rejects.toMatchObject({
      name: "ArchError",
      code: "COMMAND_FAILED",
      message: expect.stringContaining("broken"),
      details: { argv: ["sh", "-c", "echo broken >&2; exit 1"], code: 1, stderr: "broken\n" },
    });
  });

  it("writes input to stdin and closes it, and tolerates a command that does not read it", async () => {
    expect((await runCommand(["tr", "a-z", "A-Z"], { input: "shout\n" })).stdout).toBe("SHOUT\n");
    expect((await runCommand(["true"], { input: "x".repeat(1 << 20) })).code).toBe(0);
    // Without input, stdin is closed: a reader sees end of file at once instead of hanging.
    expect((await runCommand(["cat"])).stdout).toBe("");
  });

  it("hands failures to toError, so a package throws its own class with the ArchError as cause", async () => {
    class MineError extends Error {}
    const toError = (failure: Error) => new MineError(failure.message, { cause: failure });
    const failed = await runCommand(["false"], { toError }).catch((error: unknown) => error);
    expect(failed).toBeInstanceOf(MineError);
    expect((failed as MineError).cause).toMatchObject({ name: "ArchError", code: "COMMAND_FAILED" });
    const missing = await runCommand(["sbx-no-such-tool"], { toError }).catch((error: unknown) => error);
    expect((missing as MineError).cause).toMatchObject({ code: "TOOL_MISSING" });
  });

  it("reports a missing program as TOOL_MISSING and an empty argv as INVALID_OPTIONS", async () => {
    await expect(runCommand(["sbx-no-such-tool"])).rejects.toMatchObject({ code: "TOOL_MISSING" });
    await expect(runCommand([])).rejects.toMatchObject({ code: "INVALID_OPTIONS" });
  });

  it("keeps only the tail of output beyond the cap", async () => {
    const { stdout } = await runCommand(["sh", "-c", "printf 'abcdef'"], { maxOutputBytes: 3 });
    expect(stdout).toBe("def");
  });

  it("kills the process on timeout and on abort, leaving no child behind", async () => {
    const before = childPids().length;
    await expect(runCommand(["sleep", "30"], { timeoutMs: 100 })).rejects.toMatchObject({
      code: "COMMAND_FAILED",
      message: expect.stringContaining("did not finish within 100 ms"),
    });
    const controller = new AbortController();
    const pending = runCommand(["sleep", "30"], { signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    await expect(pending).rejects.toMatchObject({ message: expect.stringContaining("aborted") });
    expect(childPids().length).toBe(before);
  });
});
