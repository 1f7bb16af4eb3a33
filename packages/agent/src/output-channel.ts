// One output of a stream (stdout, stderr, or a file being read) on the host: either handed to a
// callback as it arrives, or queued for an async iterator. The agent's window is handed back only as
// the queue drains, so a consumer that stops reading stops the producer in the guest instead of
// growing host memory.
import { AgentError } from "./errors.ts";

export class OutputChannel implements AsyncIterable<Buffer> {
  readonly #grant: (bytes: number) => void;
  readonly #highWater: number;
  #queue: Buffer[] = [];
  #queued = 0;
  #withheld = 0;
  #ended = false;
  #error: AgentError | undefined;
  #waiting:
    | { resolve: (result: IteratorResult<Buffer>) => void; reject: (error: AgentError) => void }
    | undefined;
  #callback: ((data: Buffer) => void) | undefined;
  #iterating = false;

  constructor(grant: (bytes: number) => void, highWater: number, callback?: (data: Buffer) => void) {
    this.#grant = grant;
    this.#highWater = highWater;
    this.#callback = callback;
  }

  push(data: Buffer): void {
    if (this.#ended) return;
    if (this.#callback) {
      this.#callback(data);
      this.#grant(data.length);
      return;
    }
    const waiting = this.#waiting;
    if (waiting) {
      // A reader is already waiting: hand the chunk straight over, nothing queues.
      this.#waiting = undefined;
      this.#grant(data.length);
      waiting.resolve({ value: data, done: false });
      return;
    }
    // A view of the socket's chunk: a slab region handed out is never read into again (slab-reader.ts).
    this.#queue.push(data);
    this.#queued += data.length;
    if (this.#queued <= this.#highWater) this.#grant(data.length);
    else this.#withheld += data.length;
  }

  end(error?: AgentError): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = error;
    const waiting = this.#waiting;
    this.#waiting = undefined;
    if (waiting) {
      if (error) waiting.reject(error);
      else waiting.resolve({ value: undefined, done: true });
    }
  }

  get iterating(): boolean {
    return this.#iterating;
  }

  // A hand-written iterator rather than an async generator: a queued chunk is returned without
  // suspending, which matters at tens of thousands of chunks per second.
  [Symbol.asyncIterator](): AsyncIterator<Buffer> {
    if (this.#iterating) throw new AgentError("INVALID_OPTIONS", "an output can be iterated once");
    this.#iterating = true;
    return {
      next: () => this.#next(),
      return: async () => {
        this.#queue = [];
        return { value: undefined, done: true };
      },
    };
  }

  #next(): Promise<IteratorResult<Buffer>> {
    const chunk = this.#queue.shift();
    if (chunk) {
      this.#queued -= chunk.length;
      if (this.#withheld > 0 && this.#queued <= this.#highWater) {
        const bytes = this.#withheld;
        this.#withheld = 0;
        this.#grant(bytes);
      }
      return Promise.resolve({ value: chunk, done: false });
    }
    if (this.#ended) {
      return this.#error ? Promise.reject(this.#error) : Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => {
      this.#waiting = { resolve, reject };
    });
  }
}
