// Byte-level progress for long steps: a bar on a terminal, JSON lines when asked, nothing otherwise.
import cliProgress from "cli-progress";

export type ProgressPhase = "download" | "pull" | "unpack" | "ext4" | "upload";

export interface ProgressEvent {
  /** What is moving: a file name, a layer digest, an image. One bar or one JSON stream per task. */
  task: string;
  phase: ProgressPhase;
  bytes: number;
  /** Undefined when the size is not known in advance. */
  totalBytes?: number;
  done?: boolean;
}

/** What a JSON line carries: the event plus the rate and ETA the reporter measured. */
export interface ProgressLine extends ProgressEvent {
  type: "progress";
  bytesPerSecond: number;
  /** Undefined while the rate or the total is unknown. */
  etaSeconds?: number;
}

export type ProgressMode = "bar" | "json" | "none";

/**
 * JSON lines only when asked (`--json`); a bar only when the stream is a terminal; never both, and
 * nothing on a pipe or file unless JSON was asked for.
 */
export function progressModeFor(options: { json: boolean; isTTY: boolean | undefined }): ProgressMode {
  if (options.json) return "json";
  return options.isTTY === true ? "bar" : "none";
}

export interface ProgressReporter {
  update(event: ProgressEvent): void;
  /** Stops drawing (restores the cursor) and flushes the last state of every task. */
  close(): void;
  [Symbol.dispose](): void;
}

export interface ProgressReporterOptions {
  mode: ProgressMode;
  stream: NodeJS.WritableStream;
  /** At most one JSON line per task per interval (plus the final one). Default 1000 ms. */
  intervalMs?: number;
  /** The clock, injectable for tests. */
  now?: () => number;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** 1536 → `1.5 KiB`. */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value.toFixed(0) : value.toFixed(1)} ${UNITS[unit]}`;
}

function formatEta(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds)) return "--";
  if (seconds < 60) return `${Math.ceil(seconds)}s`;
  if (seconds < 3600)
    return `${Math.floor(seconds / 60)}m${String(Math.ceil(seconds % 60)).padStart(2, "0")}s`;
  return `${Math.floor(seconds / 3600)}h${String(Math.floor((seconds % 3600) / 60)).padStart(2, "0")}m`;
}

/** Rate over a sliding window of recent samples, so a stall shows as a falling rate, not an average. */
class RateMeter {
  readonly #samples: { time: number; bytes: number }[] = [];
  readonly #windowMs: number;

  constructor(windowMs: number) {
    this.#windowMs = windowMs;
  }

  add(time: number, bytes: number): number {
    const latest = { time, bytes };
    this.#samples.push(latest);
    // The samples always hold `latest`, so the fallback never changes the result; it only types `first`.
    let first = this.#samples[0] ?? latest;
    while (this.#samples.length > 2 && time - first.time > this.#windowMs) {
      this.#samples.shift();
      first = this.#samples[0] ?? latest;
    }
    const elapsed = (time - first.time) / 1000;
    return elapsed > 0 ? Math.max(0, (bytes - first.bytes) / elapsed) : 0;
  }
}

interface TaskState {
  meter: RateMeter;
  last: ProgressLine;
  lastEmitted: number | undefined;
  /** The newest state has not been written as a JSON line yet. */
  dirty: boolean;
  bar?: cliProgress.SingleBar;
}

export function createProgressReporter(options: ProgressReporterOptions): ProgressReporter {
  const now = options.now ?? (() => performance.now());
  const interval = options.intervalMs ?? 1000;
  const tasks = new Map<string, TaskState>();
  let closed = false;
  const multibar =
    options.mode === "bar"
      ? new cliProgress.MultiBar({
          stream: options.stream,
          format: "{task} [{bar}] {percentage}% {done}/{size} {rate}/s ETA {etaText}",
          barsize: 20,
          hideCursor: true,
          clearOnComplete: false,
          stopOnComplete: false,
          // The CLI's own signal handlers stop the reporter; the library must not add exit handlers.
          gracefulExit: false,
          fps: 8,
        })
      : undefined;

  const payload = (line: ProgressLine) => ({
    task: `${line.phase} ${line.task}`.slice(0, 40).padEnd(40),
    done: formatBytes(line.bytes),
    size: line.totalBytes === undefined ? "?" : formatBytes(line.totalBytes),
    rate: formatBytes(line.bytesPerSecond),
    etaText: line.done ? "0s" : formatEta(line.etaSeconds),
  });

  const emitJson = (state: TaskState, time: number) => {
    state.lastEmitted = time;
    state.dirty = false;
    options.stream.write(`${JSON.stringify(state.last)}\n`);
  };

  return {
    update(event) {
      if (closed || options.mode === "none") return;
      const time = now();
      let state = tasks.get(event.task);
      const meter = state?.meter ?? new RateMeter(5000);
      const bytesPerSecond = meter.add(time, event.bytes);
      const remaining =
        event.totalBytes === undefined ? undefined : Math.max(0, event.totalBytes - event.bytes);
      const line: ProgressLine = {
        type: "progress",
        ...event,
        bytesPerSecond: Math.round(bytesPerSecond),
        ...(remaining !== undefined && bytesPerSecond > 0
          ? { etaSeconds: Math.round((remaining / bytesPerSecond) * 10) / 10 }
          : {}),
      };
      if (!state) {
        state = { meter, last: line, lastEmitted: undefined, dirty: true };
        tasks.set(event.task, state);
      }
      state.last = line;
      state.dirty = true;
      // No bar means mode "json" ("none" returned above).
      if (!multibar) {
        if (event.done || state.lastEmitted === undefined || time - state.lastEmitted >= interval)
          emitJson(state, time);
        return;
      }
      const total = event.totalBytes ?? Math.max(event.bytes, 1);
      if (!state.bar) state.bar = multibar.create(total, event.bytes, payload(line));
      else {
        if (state.bar.getTotal() !== total) state.bar.setTotal(total);
        state.bar.update(event.bytes, payload(line));
      }
    },
    close() {
      if (closed) return;
      closed = true;
      if (options.mode === "json") {
        for (const state of tasks.values()) {
          if (state.dirty) emitJson(state, now());
        }
      }
      multibar?.stop();
    },
    [Symbol.dispose]() {
      this.close();
    },
  };
}
