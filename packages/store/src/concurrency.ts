/**
 * Runs `task` over `items` with at most `limit` running; the first failure aborts the `signal` handed
 * to the others and is what rejects, after every started task has settled (so none is left writing).
 */
export async function forEachLimit<T>(
  items: Iterable<T>,
  limit: number,
  task: (item: T, signal: AbortSignal) => Promise<void>,
  outer?: AbortSignal,
): Promise<void> {
  const controller = new AbortController();
  const signal = outer ? AbortSignal.any([outer, controller.signal]) : controller.signal;
  const iterator = items[Symbol.iterator]();
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    for (;;) {
      if (failure || signal.aborted) return;
      const next = iterator.next();
      if (next.done) return;
      try {
        await task(next.value, signal);
      } catch (error) {
        failure ??= { error };
        controller.abort(error);
        return;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, limit) }, worker));
  if (failure) throw failure.error;
  outer?.throwIfAborted();
}
