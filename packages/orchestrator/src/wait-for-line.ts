import type { Logger } from "@sbx/arch";

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
