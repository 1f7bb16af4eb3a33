import { describe, expect, it } from "vitest";
import { type LineEvent, type LineSource, waitForConsoleLogged, waitForLine } from "./wait-for-line.ts";

function fakeConsole() {
  const listeners = new Set<(event: LineEvent) => void>();
  const source: LineSource = {
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
  return {
    source,
    listeners,
    print: (line: string) => {
      for (const l of [...listeners]) l({ kind: "line", line });
    },
    end: (reason?: string) => {
      for (const l of [...listeners]) l({ kind: "end", ...(reason ? { reason } : {}) });
    },
  };
}

describe("waitForLine", () => {
  it("resolves on the matching line and unsubscribes", async () => {
    const console = fakeConsole();
    const waiting = waitForLine({
      source: console.source,
      match: /^READY$/,
      what: "the ready marker",
      timeoutMs: 5_000,
    });
    console.print("booting");
    console.print("READY");
    expect((await waiting).line).toBe("READY");
    expect(console.listeners.size).toBe(0);
  });

  it("times out with the last console lines, logging progress at most every interval", async () => {
    const console = fakeConsole();
    const logs: string[] = [];
    const waiting = waitForLine({
      source: console.source,
      match: (line) => line === "READY",
      what: "the ready marker",
      timeoutMs: 120,
      logIntervalMs: 50,
      keepLines: 2,
      logger: { info: (_fields, message) => void logs.push(message) },
    });
    for (const line of ["one", "two", "Kernel panic - not syncing"]) console.print(line);
    const error = await waiting.catch((e) => e);
    expect(error.code).toBe("WAIT_TIMEOUT");
    expect(error.details.lastLines).toEqual(["two", "Kernel panic - not syncing"]);
    expect(error.message).toContain("| Kernel panic - not syncing");
    expect(logs.length).toBeGreaterThanOrEqual(1);
    expect(logs.length).toBeLessThanOrEqual(2);
    expect(console.listeners.size).toBe(0);
  });

  it("fails at once when the console ends (the VM exited)", async () => {
    const console = fakeConsole();
    const waiting = waitForLine({
      source: console.source,
      match: /READY/,
      what: "the ready marker",
      timeoutMs: 5_000,
    });
    console.print("init: cannot mount /proc");
    console.end("firecracker exited with 1");
    const error = await waiting.catch((e) => e);
    expect(error.code).toBe("WAIT_ENDED");
    expect(error.message).toMatch(/firecracker exited with 1[\s\S]*cannot mount \/proc/);
  });

  it("honours an AbortSignal", async () => {
    const console = fakeConsole();
    const controller = new AbortController();
    const waiting = waitForLine({
      source: console.source,
      match: /READY/,
      what: "the ready marker",
      timeoutMs: 5_000,
      signal: controller.signal,
    });
    controller.abort(new Error("shutting down"));
    const error = await waiting.catch((e) => e);
    expect(error.code).toBe("ABORTED");
    expect(console.listeners.size).toBe(0);
    await expect(
      waitForLine({
        source: console.source,
        match: /x/,
        what: "x",
        timeoutMs: 10,
        signal: AbortSignal.abort(),
      }),
    ).rejects.toMatchObject({ code: "ABORTED" });
    expect(console.listeners.size).toBe(0);
  });
});

describe("waitForConsoleLogged", () => {
  it("logs progress with the last console line while waiting, and stops when the line came", async () => {
    let release: (text: string) => void = () => undefined;
    const fc = {
      console: { lines: () => ["booting..."] },
      waitForConsole: () =>
        new Promise<{ line: { text: string } }>((resolve) => {
          release = (text) => resolve({ line: { text } });
        }),
    };
    const logged: { fields: Record<string, unknown>; message: string }[] = [];
    const logger = {
      info: (fields: Record<string, unknown>, message: string) => logged.push({ fields, message }),
    };
    const waiting = waitForConsoleLogged(fc, /READY/, {
      what: "the ready marker",
      timeoutMs: 60_000,
      logIntervalMs: 10,
      logger: logger as never,
    });
    while (logged.length < 2) await new Promise((resolve) => setTimeout(resolve, 5));
    expect(logged[0]).toMatchObject({
      message: "still waiting for the ready marker",
      fields: { what: "the ready marker", lastLine: "booting..." },
    });
    release("READY");
    expect(await waiting).toBe("READY");
    const count = logged.length;
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(logged.length).toBe(count);
  });
});
