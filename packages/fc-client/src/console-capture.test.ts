import { PassThrough } from "node:stream";
import { describe, expect, it } from "vitest";
import { ConsoleCapture } from "./console-capture.ts";
import { FirecrackerLaunchError } from "./errors.ts";

describe("ConsoleCapture", () => {
  it("splits chunks into lines, strips CR, keeps a trailing partial line until end", async () => {
    const capture = new ConsoleCapture();
    capture.push("hel");
    capture.push("lo\r\nwor");
    expect(capture.lines()).toEqual(["hello"]);
    capture.push("ld\nlast");
    expect(capture.lines()).toEqual(["hello", "world"]);
    capture.end();
    expect(capture.lines()).toEqual(["hello", "world", "last"]);
    const seen: string[] = [];
    for await (const line of capture) seen.push(line);
    expect(seen).toEqual(["hello", "world", "last"]);
  });

  it("is bounded: drops the oldest lines and cuts overlong lines", () => {
    const capture = new ConsoleCapture({ maxLines: 3, maxLineBytes: 8 });
    capture.push("a\nb\nc\nd\ne\n");
    expect(capture.lines()).toEqual(["c", "d", "e"]);
    expect(capture.dropped).toBe(2);
    capture.push("0123456789abcdefXY");
    expect(capture.lines(2)).toEqual(["01234567", "89abcdef"]);
    capture.end();
    expect(capture.lines(1)).toEqual(["XY"]);
    expect(() => new ConsoleCapture({ maxLines: 0 })).toThrow(FirecrackerLaunchError);
  });

  it("iterates live lines from a stream until it ends", async () => {
    const capture = new ConsoleCapture();
    const stream = new PassThrough();
    capture.attach(stream);
    const collected = (async () => {
      const out: string[] = [];
      for await (const line of capture) out.push(line);
      return out;
    })();
    stream.write("one\n");
    await new Promise((r) => setTimeout(r, 5));
    stream.write("two\nthree\n");
    stream.end();
    await new Promise((r) => stream.once("end", r));
    capture.end();
    expect(await collected).toEqual(["one", "two", "three"]);
  });

  it("waitFor matches retained and new lines, honours since, times out and reports closing", async () => {
    const capture = new ConsoleCapture();
    capture.push("boot\nREADY 1\n");
    const early = await capture.waitFor("READY", { timeoutMs: 100 });
    expect(early.line).toEqual({ seq: 1, text: "READY 1" });
    const later = capture.waitFor(/READY (\d+)/, { timeoutMs: 2000, since: capture.position });
    setTimeout(() => capture.push("noise\nREADY 2\n"), 10);
    const match = await later;
    expect(match.match[1]).toBe("2");
    expect(match.line.seq).toBe(3);

    const timeout = await capture.waitFor("never", { timeoutMs: 30 }).catch((e: unknown) => e);
    expect(timeout).toBeInstanceOf(FirecrackerLaunchError);
    expect((timeout as FirecrackerLaunchError).code).toBe("CONSOLE_TIMEOUT");
    expect((timeout as FirecrackerLaunchError).output).toContain("READY 2");

    const controller = new AbortController();
    const aborted = capture
      .waitFor("never", { timeoutMs: 5000, signal: controller.signal })
      .catch((e: unknown) => e);
    controller.abort(new Error("stop"));
    expect(((await aborted) as Error).message).toBe("stop");

    const closed = capture.waitFor("never", { timeoutMs: 5000 }).catch((e: unknown) => e);
    capture.end();
    expect(((await closed) as FirecrackerLaunchError).code).toBe("CONSOLE_CLOSED");
  });
});
