import { OrchestratorError } from "./errors.ts";

/** Runs at most `max` tasks at once (concurrent creates, builds); the rest wait in FIFO order. */
export class ConcurrencyLimiter {
  readonly max: number;
  #active = 0;
  readonly #queue: { start: () => void }[] = [];

  constructor(max: number) {
    if (!Number.isInteger(max) || max < 1) {
      throw new OrchestratorError(
        "INVALID_OPTIONS",
        `a concurrency limit must be a positive integer, got ${max}`,
      );
    }
    this.max = max;
  }

  get active(): number {
    return this.#active;
  }

  get waiting(): number {
    return this.#queue.length;
  }

  /** Runs `task` when a slot is free. An abort while waiting removes it from the queue (ABORTED). */
  async run<T>(task: () => Promise<T>, options: { signal?: AbortSignal } = {}): Promise<T> {
    await this.#acquire(options.signal);
    try {
      return await task();
    } finally {
      this.#active--;
      this.#queue.shift()?.start();
    }
  }

  #acquire(signal: AbortSignal | undefined): Promise<void> {
    if (signal?.aborted) {
      return Promise.reject(
        new OrchestratorError("ABORTED", "aborted before a slot was free", { cause: signal.reason }),
      );
    }
    if (this.#active < this.max) {
      this.#active++;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const entry = {
        start: () => {
          signal?.removeEventListener("abort", onAbort);
          this.#active++;
          resolve();
        },
      };
      const onAbort = () => {
        const index = this.#queue.indexOf(entry);
        if (index >= 0) this.#queue.splice(index, 1);
        reject(
          new OrchestratorError("ABORTED", "aborted while waiting for a free slot", {
            cause: signal?.reason,
          }),
        );
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#queue.push(entry);
    });
  }
}
