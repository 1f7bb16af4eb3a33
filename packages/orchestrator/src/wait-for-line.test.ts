import { describe, expect, it } from "vitest";
import { waitForConsoleLogged } from "./wait-for-line.ts";

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
