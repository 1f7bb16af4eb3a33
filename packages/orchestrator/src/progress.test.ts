import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { createProgressReporter, formatBytes, type ProgressLine, progressModeFor } from "./progress.ts";

function sink() {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _encoding, callback) {
      chunks.push(String(chunk));
      callback();
    },
  });
  return { stream, text: () => chunks.join("") };
}

describe("progressModeFor", () => {
  it("draws only on a terminal, writes JSON only when asked, never both", () => {
    expect(progressModeFor({ json: false, isTTY: true })).toBe("bar");
    expect(progressModeFor({ json: false, isTTY: false })).toBe("none");
    expect(progressModeFor({ json: false, isTTY: undefined })).toBe("none");
    expect(progressModeFor({ json: true, isTTY: true })).toBe("json");
    expect(progressModeFor({ json: true, isTTY: false })).toBe("json");
  });
});

describe("createProgressReporter", () => {
  it("json: at most one line per task per interval, the final state always, with rate and ETA", () => {
    const out = sink();
    let now = 0;
    const reporter = createProgressReporter({
      mode: "json",
      stream: out.stream,
      intervalMs: 1000,
      now: () => now,
    });
    // 1 MiB per second for 3 s, one update every 100 ms.
    for (let step = 0; step <= 30; step++) {
      now = step * 100;
      reporter.update({
        task: "a.tgz",
        phase: "download",
        bytes: step * 104_857.6,
        totalBytes: 10 * 1024 * 1024,
      });
    }
    reporter.update({ task: "b", phase: "pull", bytes: 5 });
    reporter.close();
    const lines = out
      .text()
      .trimEnd()
      .split("\n")
      .map((line) => JSON.parse(line) as ProgressLine);
    const a = lines.filter((line) => line.task === "a.tgz");
    // t = 0, 1000, 2000, 3000 ms, and nothing else: the last (t = 3000) was already written.
    expect(a.map((line) => line.bytes)).toEqual([0, 1048576, 2097152, 3145728]);
    expect(a.at(-1)?.bytesPerSecond).toBe(1048576);
    expect(a.at(-1)?.etaSeconds).toBe(7);
    expect(a[0]?.etaSeconds).toBeUndefined();
    expect(lines.filter((line) => line.task === "b")).toEqual([
      { type: "progress", task: "b", phase: "pull", bytes: 5, bytesPerSecond: 0 },
    ]);
    reporter.update({ task: "a.tgz", phase: "download", bytes: 1 });
    expect(out.text().trimEnd().split("\n")).toHaveLength(lines.length);
  });

  it("json: a done event is written at once; close flushes a task's unwritten last state", () => {
    const out = sink();
    let now = 0;
    const reporter = createProgressReporter({
      mode: "json",
      stream: out.stream,
      intervalMs: 1000,
      now: () => now,
    });
    reporter.update({ task: "x", phase: "unpack", bytes: 1, totalBytes: 10 });
    now = 10;
    reporter.update({ task: "x", phase: "unpack", bytes: 5, totalBytes: 10 });
    now = 20;
    reporter.update({ task: "y", phase: "ext4", bytes: 10, totalBytes: 10, done: true });
    reporter.close();
    const lines = out
      .text()
      .trimEnd()
      .split("\n")
      .map((line) => JSON.parse(line) as ProgressLine);
    expect(lines.map((line) => [line.task, line.bytes])).toEqual([
      ["x", 1],
      ["y", 10],
      ["x", 5],
    ]);
  });

  it("none: writes nothing", () => {
    const out = sink();
    const reporter = createProgressReporter({ mode: "none", stream: out.stream });
    reporter.update({ task: "a", phase: "download", bytes: 1, totalBytes: 2, done: true });
    reporter.close();
    expect(out.text()).toBe("");
  });
});

describe("formatBytes", () => {
  it("uses binary units", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(1536)).toBe("1.5 KiB");
    expect(formatBytes(3 * 1024 ** 3)).toBe("3.0 GiB");
  });
});
