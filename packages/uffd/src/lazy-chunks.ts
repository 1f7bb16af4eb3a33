// The fault loop's side of lazy layers (memory that lives in a build store): which chunks it asked the
// main thread for, the faults that wait for one, and the working-set pages each holds. The loop never
// waits for a chunk: a fault whose page is absent is parked here and the loop goes on serving the
// others; when the chunk arrives (the main thread posts it and bumps `notifyFd`), it is mapped, its
// parked faults are served and its working-set pages copied in.
import { type MessagePort, receiveMessageOnPort } from "node:worker_threads";
import type { QueuedFault } from "./fault-serving.ts";
import { chunkKey, type LayerChunk, type Layers } from "./layers.ts";
import { PAGE_4K } from "./linux.ts";
import type { ChunkArrival } from "./worker-protocol.ts";

/** What one arrived chunk releases: parked faults and working-set page offsets. */
export interface ArrivedChunk {
  faults: QueuedFault[];
  workingSetPages: number[];
}

export class LazyChunks {
  readonly notifyFd: number;
  readonly #port: MessagePort;
  readonly #layers: Layers;
  readonly #ask: (chunk: LayerChunk, urgent: boolean) => void;
  readonly #requested = new Set<number>();
  readonly #urgent = new Set<number>();
  readonly #waiting = new Map<number, QueuedFault[]>();
  readonly #workingSet = new Map<number, number[]>();

  constructor(
    lazy: { port: MessagePort; notifyFd: number },
    layers: Layers,
    ask: (chunk: LayerChunk, urgent: boolean) => void,
  ) {
    this.#port = lazy.port;
    this.notifyFd = lazy.notifyFd;
    this.#layers = layers;
    this.#ask = ask;
  }

  #request(chunk: LayerChunk, key: number, urgent: boolean): void {
    if (urgent ? this.#urgent.has(key) : this.#requested.has(key)) return;
    this.#requested.add(key);
    if (urgent) this.#urgent.add(key);
    this.#ask(chunk, urgent);
  }

  /**
   * Asks for the chunks of the working set's absent pages, in the set's order, before the guest needs
   * them. The walk is bounded by twice the memory's page count, whatever the ranges say.
   */
  requestWorkingSet(ranges: readonly { offset: number; length: number }[]): void {
    let budget = 2 * Math.ceil(this.#layers.size / PAGE_4K);
    for (const { offset, length } of ranges) {
      const end = Math.min(this.#layers.size, offset + length);
      for (let at = offset - (offset % PAGE_4K); at < end && budget-- > 0; at += PAGE_4K) {
        const chunk = this.#layers.absentChunk(at);
        if (!chunk) continue;
        const key = chunkKey(chunk);
        let pages = this.#workingSet.get(key);
        if (!pages) {
          pages = [];
          this.#workingSet.set(key, pages);
          this.#request(chunk, key, false);
        }
        pages.push(at);
      }
    }
  }

  /** Parks a fault until its chunk arrives, asking for the chunk now. */
  defer(chunk: LayerChunk, fault: QueuedFault): void {
    const key = chunkKey(chunk);
    const parked = this.#waiting.get(key);
    if (parked) parked.push(fault);
    else this.#waiting.set(key, [fault]);
    this.#request(chunk, key, true);
  }

  /** How many faults are parked right now. */
  get parked(): number {
    let count = 0;
    for (const faults of this.#waiting.values()) count += faults.length;
    return count;
  }

  /**
   * Maps every chunk the main thread posted since the last call (the caller saw `notifyFd` readable and
   * drained it) and hands what each releases to `onArrived`, which returns false to stop (the peer left).
   */
  takeArrivals(onArrived: (released: ArrivedChunk) => boolean): boolean {
    for (;;) {
      const received = receiveMessageOnPort(this.#port);
      if (!received) return true;
      const arrival = received.message as ChunkArrival;
      this.#layers.installChunk(arrival, arrival.path);
      const key = chunkKey(arrival);
      const faults = this.#waiting.get(key) ?? [];
      const workingSetPages = this.#workingSet.get(key) ?? [];
      this.#waiting.delete(key);
      this.#workingSet.delete(key);
      if (!onArrived({ faults, workingSetPages })) return false;
    }
  }
}
