import type { Logger } from "@sbx/arch";
import { OrchestratorError } from "./errors.ts";

export type LineEvent = { kind: "line"; line: string } | { kind: "end"; reason?: string };

/**
 * A source of console lines (a VM's serial console). `subscribe` returns the unsubscribe function;
 * waiting never consumes or closes the source, so the caller keeps using it afterwards.
 */
export interface LineSource {
  subscribe(listener: (event: LineEvent) => void): () => void;
}

export interface WaitForLineOptions {
  source: LineSource;
  /** The line waited for, e.g. the guest's ready marker. */
  match: RegExp | ((line: string) => boolean);
  /** What is awaited, for logs and errors: "the ready marker". */
  what: string;
  timeoutMs: number;
  /** Progress is logged at most this often (default 5 s). */
  logIntervalMs?: number;
  /** How many recent lines a timeout error carries (default 20). */
  keepLines?: number;
  logger?: Logger;
  signal?: AbortSignal;
}

/**
 * Logs `message` with the elapsed time and `fields()` every `intervalMs` until the returned function
 * is called: how every long wait here shows it is still alive long before its timeout.
 */
export function startProgressLog(options: {
  logger: Logger | undefined;
  intervalMs: number;
  message: string;
  fields: () => Record<string, unknown>;
}): () => void {
  const started = performance.now();
  const timer = setInterval(() => {
    options.logger?.info?.(
      { ...options.fields(), elapsedMs: Math.round(performance.now() - started) },
      options.message,
    );
  }, options.intervalMs);
  return () => clearInterval(timer);
}

export interface WaitForLineResult {
  line: string;
  elapsedMs: number;
}

/**
 * Waits for a console line. Logs progress at most every `logIntervalMs`; on timeout, on abort and
 * when the source ends first, the error carries the last console lines, which usually say why.
 */
export function waitForLine(options: WaitForLineOptions): Promise<WaitForLineResult> {
  const keep = options.keepLines ?? 20;
  const matches =
    typeof options.match === "function"
      ? options.match
      : (line: string) => (options.match as RegExp).test(line);
  const started = performance.now();
  const recent: string[] = [];

  return new Promise((resolve, reject) => {
    let unsubscribe: () => void = () => undefined;
    let settled = false;
    const finish = (outcome: { line: string } | { error: OrchestratorError }) => {
      if (settled) return;
      settled = true;
      clearTimeout(timeout);
      stopProgress();
      options.signal?.removeEventListener("abort", onAbort);
      unsubscribe();
      if ("error" in outcome) reject(outcome.error);
      else resolve({ line: outcome.line, elapsedMs: performance.now() - started });
    };
    const failure = (code: "WAIT_TIMEOUT" | "WAIT_ENDED" | "ABORTED", why: string, cause?: unknown) => {
      const tail =
        recent.length > 0
          ? `; last console lines:\n${recent.map((l) => `  | ${l}`).join("\n")}`
          : "; the console printed nothing";
      return new OrchestratorError(code, `${why} while waiting for ${options.what}${tail}`, {
        ...(cause === undefined ? {} : { cause }),
        details: { what: options.what, lastLines: [...recent], elapsedMs: performance.now() - started },
      });
    };
    const onAbort = () => finish({ error: failure("ABORTED", "aborted", options.signal?.reason) });
    const timeout = setTimeout(
      () => finish({ error: failure("WAIT_TIMEOUT", `no match after ${options.timeoutMs} ms`) }),
      options.timeoutMs,
    );
    const stopProgress = startProgressLog({
      logger: options.logger,
      intervalMs: options.logIntervalMs ?? 5_000,
      message: `still waiting for ${options.what}`,
      fields: () => ({ what: options.what, lastLine: recent.at(-1) }),
    });
    if (options.signal?.aborted) {
      onAbort();
      return;
    }
    options.signal?.addEventListener("abort", onAbort, { once: true });
    unsubscribe = options.source.subscribe((event) => {
      if (event.kind === "end") {
        finish({
          error: failure("WAIT_ENDED", `the console ended${event.reason ? ` (${event.reason})` : ""}`),
        });
        return;
      }
      recent.push(event.line);
      if (recent.length > keep) recent.shift();
      if (matches(event.line)) finish({ line: event.line });
    });
    if (settled) unsubscribe();
  });
}

/** What `waitForConsoleLogged` needs of a Firecracker process (`@sbx/fc-client`'s FirecrackerProcess). */
export interface ConsoleWaiter {
  readonly console: { lines(n?: number): string[] };
  waitForConsole(
    pattern: string | RegExp,
    options: { timeoutMs: number; since?: number },
  ): Promise<{ line: { text: string } }>;
}

/**
 * `fc.waitForConsole` with progress: logs "still waiting for <what>" with the last console line at
 * most every `logIntervalMs`, so a slow boot is visible long before its timeout (whose error already
 * carries the last console lines).
 */
export async function waitForConsoleLogged(
  fc: ConsoleWaiter,
  pattern: string | RegExp,
  options: { what: string; timeoutMs: number; since?: number; logIntervalMs: number; logger?: Logger },
): Promise<string> {
  const stopProgress = startProgressLog({
    logger: options.logger,
    intervalMs: options.logIntervalMs,
    message: `still waiting for ${options.what}`,
    fields: () => ({ what: options.what, lastLine: fc.console.lines(1)[0] }),
  });
  try {
    const match = await fc.waitForConsole(pattern, {
      timeoutMs: options.timeoutMs,
      ...(options.since === undefined ? {} : { since: options.since }),
    });
    return match.line.text;
  } finally {
    stopProgress();
  }
}
