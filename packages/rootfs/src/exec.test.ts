import { readdirSync, readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { runChecked, runCommand } from "./exec.ts";

const fdCount = () => readdirSync("/proc/self/fd").length;

function childPids(): string[] {
  try {
    return readdirSync(`/proc/${process.pid}/task`).flatMap((tid) => {
      try {
        return readFileSync(`/proc/${process.pid}/task/${tid}/children`, "utf8")
          .trim()
          .split(/\s+/)
          .filter(Boolean);
      } catch {
        return [];
      }
    });
  } catch {
    return [];
  }
}

describe("runCommand", () => {
  it("collects output and any exit status without throwing, and leaks no fds", async () => {
    const before = fdCount();
    const result = await runCommand("sh", ["-c", "echo out; echo err >&2; exit 3"]);
    expect(result).toMatchObject({ code: 3, stdout: "out\n", stderr: "err\n" });
    expect(fdCount()).toBe(before);
  });

  it("runChecked throws COMMAND_FAILED with stderr", async () => {
    await expect(runChecked("sh", ["-c", "echo broken >&2; exit 1"])).rejects.toMatchObject({
      code: "COMMAND_FAILED",
      message: expect.stringContaining("broken"),
    });
  });

  it("reports a missing program as TOOL_MISSING", async () => {
    await expect(runCommand("sbx-no-such-tool", [])).rejects.toMatchObject({ code: "TOOL_MISSING" });
  });

  it("kills the process on timeout and on abort, leaving no child behind", async () => {
    const before = childPids().length;
    await expect(runCommand("sleep", ["30"], { timeoutMs: 100 })).rejects.toMatchObject({
      code: "COMMAND_FAILED",
      message: expect.stringContaining("did not finish within 100 ms"),
    });
    const controller = new AbortController();
    const pending = runCommand("sleep", ["30"], { signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    await expect(pending).rejects.toMatchObject({ message: expect.stringContaining("aborted") });
    expect(childPids().length).toBe(before);
  });
});
