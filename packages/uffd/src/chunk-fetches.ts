// The main thread's side of lazy layers: the fault worker asks for chunks, this fetches them through
// the caller's sources (a build store behind a chunk cache, in sbx), a bounded number at a time, the
// ones a fault waits for before the working set's, each within a deadline, and hands each arrival to
// `deliver`. The first failure is final: the guest cannot run without the page it waits for.
import { chunkKey, type LayerChunk } from "./layers.ts";

/** Where a lazy layer's chunks come from: see PageFaultServerOptions.memory.remote. */
export interface RemoteMemorySource {
  /** The memory file's size in bytes (the guest's memory). */
  sizeBytes: number;
  /** Bytes per chunk (page-aligned); chunk i holds [i × chunkSize, (i + 1) × chunkSize). */
  chunkSize: number;
  /**
   * Makes chunk `index` local: the path of a file holding exactly its bytes (and nothing else may ever
   * be written to that file), or undefined when the chunk is all zeros.
   */
  fetchChunk(index: number, signal: AbortSignal): Promise<string | undefined>;
}

export interface ChunkFetchesOptions {
  /** Per layer index: its source, or undefined for a local layer. */
  sources: readonly (RemoteMemorySource | undefined)[];
  concurrency: number;
  timeoutMs: number;
  deliver(chunk: LayerChunk, path: string | undefined): void;
  fail(chunk: LayerChunk, cause: unknown): void;
}

interface Pending {
  chunk: LayerChunk;
  key: number;
  urgent: boolean;
}

export class ChunkFetches {
  readonly #options: ChunkFetchesOptions;
  readonly #abort = new AbortController();
  readonly #queue: Pending[] = [];
  /** Queued or running, by key. */
  readonly #known = new Map<number, Pending>();
  #running = 0;
  #failed = false;
  /** Chunks fetched, and the milliseconds from request to delivery summed over them. */
  fetched = 0;
  waitMs = 0;

  constructor(options: ChunkFetchesOptions) {
    this.#options = options;
  }

  /** Queues a chunk once; an urgent request moves a queued one ahead of the working set's. */
  request(chunk: LayerChunk, urgent: boolean): void {
    if (this.#failed || this.#abort.signal.aborted) return;
    const key = chunkKey(chunk);
    const known = this.#known.get(key);
    if (known) {
      if (urgent && !known.urgent) {
        known.urgent = true;
        const at = this.#queue.indexOf(known);
        if (at > 0) {
          this.#queue.splice(at, 1);
          this.#queue.unshift(known);
        }
      }
      return;
    }
    const pending: Pending = { chunk, key, urgent };
    this.#known.set(key, pending);
    if (urgent) {
      // Behind the other urgent ones, ahead of the working set's.
      const firstLazy = this.#queue.findIndex((queued) => !queued.urgent);
      this.#queue.splice(firstLazy < 0 ? this.#queue.length : firstLazy, 0, pending);
    } else this.#queue.push(pending);
    this.#pump();
  }

  #pump(): void {
    while (this.#running < this.#options.concurrency && this.#queue.length > 0 && !this.#failed) {
      const next = this.#queue.shift() as Pending;
      this.#running++;
      void this.#fetch(next).finally(() => {
        this.#running--;
        this.#pump();
      });
    }
  }

  async #fetch({ chunk }: Pending): Promise<void> {
    const source = this.#options.sources[chunk.layer];
    const started = performance.now();
    try {
      if (!source) throw new Error(`memory layer ${chunk.layer} is not lazy`);
      const signal = AbortSignal.any([this.#abort.signal, AbortSignal.timeout(this.#options.timeoutMs)]);
      // Raced with the signal as well: a source that ignores it still cannot hold the guest past the deadline.
      const path = await Promise.race([
        source.fetchChunk(chunk.index, signal),
        new Promise<never>((_, reject) => {
          if (signal.aborted) reject(signal.reason);
          signal.addEventListener("abort", () => reject(signal.reason), { once: true });
        }),
      ]);
      if (this.#abort.signal.aborted) return;
      this.fetched++;
      this.waitMs += performance.now() - started;
      this.#options.deliver(chunk, path);
    } catch (cause) {
      if (this.#failed || this.#abort.signal.aborted) return;
      this.#failed = true;
      this.#options.fail(chunk, cause);
    }
  }

  /** Stops everything queued and aborts what runs; nothing is delivered after this. */
  stop(): void {
    this.#abort.abort();
    this.#queue.length = 0;
  }
}
