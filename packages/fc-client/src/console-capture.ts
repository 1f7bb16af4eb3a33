import type { Readable } from "node:stream";
import { FirecrackerLaunchError } from "./errors.ts";

/** One line of the guest's serial console, numbered in order of arrival. */
export interface ConsoleLine {
  /** Position of the line in the whole output, from 0; never reused. */
  seq: number;
  text: string;
}

/** How long `ConsoleCapture.waitFor` waits, and for which lines. */
export interface WaitForConsoleOptions {
  timeoutMs: number;
  signal?: AbortSignal;
  /**
   * First line position to consider (see {@link ConsoleCapture.position}); default 0, which also
   * matches lines that arrived before the call and are still retained.
   */
  since?: number;
}

/** The console line a pattern matched, with the match. */
export interface ConsoleMatch {
  line: ConsoleLine;
  match: RegExpExecArray;
}

/** Limits for the captured output: whole lines kept, and the longest line before it is cut. */
export interface ConsoleLimits {
  maxLines?: number;
  maxLineBytes?: number | undefined;
}

/**
 * Line-by-line capture of a process's output, bounded in memory (the oldest lines are dropped),
 * readable as an async iterable. Each iteration starts at the oldest retained line and ends when the
 * stream ends; a consumer that falls behind by more than `maxLines` skips what was dropped.
 */
export class ConsoleCapture implements AsyncIterable<string> {
  readonly maxLines: number;
  readonly maxLineBytes: number;
  #lines: ConsoleLine[] = [];
  #next = 0;
  #partial = "";
  #ended = false;
  #waiters = new Set<() => void>();
  #dropped = 0;

  constructor(limits: ConsoleLimits = {}) {
    this.maxLines = limits.maxLines ?? 10_000;
    this.maxLineBytes = limits.maxLineBytes ?? 64 * 1024;
    if (!(this.maxLines >= 1) || !(this.maxLineBytes >= 1)) {
      throw new FirecrackerLaunchError("INVALID_OPTIONS", "console limits must be positive numbers", {
        details: { ...limits },
      });
    }
  }

  /** Feeds a readable stream (decoded as UTF-8) into the capture; several streams may feed one. */
  attach(stream: Readable): void {
    stream.setEncoding("utf8");
    stream.on("data", (chunk: string) => this.push(chunk));
  }

  /** Adds raw output; complete lines become visible at once. */
  push(chunk: string): void {
    let text = this.#partial + chunk;
    let newline = text.indexOf("\n");
    while (newline !== -1) {
      this.#add(text.slice(0, newline).replace(/\r$/, ""));
      text = text.slice(newline + 1);
      newline = text.indexOf("\n");
    }
    while (text.length > this.maxLineBytes) {
      this.#add(text.slice(0, this.maxLineBytes));
      text = text.slice(this.maxLineBytes);
    }
    this.#partial = text;
    this.#wake();
  }

  /** No more output: a trailing partial line is kept as a line and iterators finish. */
  end(): void {
    if (this.#ended) return;
    if (this.#partial.length > 0) this.#add(this.#partial);
    this.#partial = "";
    this.#ended = true;
    this.#wake();
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** The position the next line will get; pass it as `since` to wait only for newer lines. */
  get position(): number {
    return this.#next;
  }

  /** Lines dropped because more than `maxLines` were retained. */
  get dropped(): number {
    return this.#dropped;
  }

  /** The retained lines, oldest first (the last `n` when given). */
  lines(n?: number): string[] {
    const slice = n === undefined ? this.#lines : this.#lines.slice(Math.max(0, this.#lines.length - n));
    return slice.map((line) => line.text);
  }

  #add(text: string): void {
    this.#lines.push({ seq: this.#next++, text });
    if (this.#lines.length > this.maxLines) {
      const excess = this.#lines.length - this.maxLines;
      this.#lines.splice(0, excess);
      this.#dropped += excess;
    }
  }

  #wake(): void {
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const wake of waiters) wake();
  }

  #changed(): Promise<void> {
    return new Promise((resolve) => this.#waiters.add(resolve));
  }

  #from(seq: number): ConsoleLine[] {
    const first = this.#lines[0];
    if (!first) return [];
    return this.#lines.slice(Math.max(0, seq - first.seq));
  }

  async *[Symbol.asyncIterator](): AsyncIterator<string> {
    let seq = this.#lines[0]?.seq ?? this.#next;
    for (;;) {
      const pending = this.#from(seq);
      for (const line of pending) {
        seq = line.seq + 1;
        yield line.text;
      }
      if (pending.length === 0) {
        if (this.#ended) return;
        await this.#changed();
      }
    }
  }

  /**
   * Resolves with the first line (from `since` on) matching `pattern`; rejects with
   * CONSOLE_TIMEOUT after `timeoutMs`, CONSOLE_CLOSED when the output ends first, or the signal's reason.
   */
  async waitFor(pattern: string | RegExp, options: WaitForConsoleOptions): Promise<ConsoleMatch> {
    const regex = typeof pattern === "string" ? new RegExp(escapeRegExp(pattern)) : pattern;
    let seq = options.since ?? 0;
    const deadline = Date.now() + options.timeoutMs;
    let timer: NodeJS.Timeout | undefined;
    let wakeOnAbort: (() => void) | undefined;
    try {
      for (;;) {
        options.signal?.throwIfAborted();
        for (const line of this.#from(seq)) {
          seq = line.seq + 1;
          regex.lastIndex = 0;
          const match = regex.exec(line.text);
          if (match) return { line, match };
        }
        if (this.#ended) {
          throw new FirecrackerLaunchError(
            "CONSOLE_CLOSED",
            `the console closed (the process exited) before a line matched ${String(regex)}; last lines: ${this.lines(10).join(" | ")}`,
            { output: this.lines(20), details: { pattern: String(regex) } },
          );
        }
        const remaining = deadline - Date.now();
        if (remaining <= 0) {
          throw new FirecrackerLaunchError(
            "CONSOLE_TIMEOUT",
            `no console line matched ${String(regex)} within ${options.timeoutMs} ms; last lines: ${this.lines(10).join(" | ")}`,
            { output: this.lines(20), details: { pattern: String(regex), timeoutMs: options.timeoutMs } },
          );
        }
        await new Promise<void>((resolve) => {
          const wake = () => resolve();
          timer = setTimeout(wake, remaining);
          wakeOnAbort = wake;
          options.signal?.addEventListener("abort", wake, { once: true });
          this.#waiters.add(wake);
        });
        if (wakeOnAbort) this.#waiters.delete(wakeOnAbort);
        clearTimeout(timer);
        if (wakeOnAbort) options.signal?.removeEventListener("abort", wakeOnAbort);
      }
    } finally {
      clearTimeout(timer);
      if (wakeOnAbort) {
        this.#waiters.delete(wakeOnAbort);
        options.signal?.removeEventListener("abort", wakeOnAbort);
      }
    }
  }
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
