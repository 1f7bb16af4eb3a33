// The counters and the latency histogram both fault loops write (shared memory the server's metrics()
// reads), behind one recorder so that the loops count the same things the same way.
import type { METRIC } from "./worker-protocol.ts";

export class FaultMetrics {
  readonly #counters: Float64Array;
  readonly #histogram: Int32Array;

  constructor(counters: Float64Array, histogram: Int32Array) {
    this.#counters = counters;
    this.#histogram = histogram;
  }

  /** Adds `n` to a counter (see METRIC). */
  add(slot: number, n = 1): void {
    if (n > 0) this.#counters[slot] = (this.#counters[slot] ?? 0) + n;
  }

  /** Marks a one-time state (prefetchComplete, prefetchStale). */
  flag(slot: typeof METRIC.prefetchComplete | typeof METRIC.prefetchStale): void {
    this.#counters[slot] = 1;
  }

  /** `count` faults served in `nsEach` nanoseconds each: bucket i holds (2^(i-1), 2^i] ns. */
  latency(nsEach: number, count = 1): void {
    const bucket = Math.min(this.#histogram.length - 1, Math.max(0, Math.ceil(Math.log2(nsEach + 1))));
    Atomics.add(this.#histogram, bucket, count);
  }
}
