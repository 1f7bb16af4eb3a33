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
  #wake: (() => void) | undefined;
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
    // A view of the socket's chunk: net gives every read its own buffer, so it is never overwritten.
    this.#queue.push(data);
    this.#queued += data.length;
    if (this.#queued <= this.#highWater) this.#grant(data.length);
    else this.#withheld += data.length;
    this.#wake?.();
  }

  end(error?: AgentError): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = error;
    this.#wake?.();
  }

  get iterating(): boolean {
    return this.#iterating;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    if (this.#iterating) throw new AgentError("INVALID_OPTIONS", "an output can be iterated once");
    this.#iterating = true;
    for (;;) {
      const chunk = this.#queue.shift();
      if (chunk) {
        this.#queued -= chunk.length;
        if (this.#withheld > 0 && this.#queued <= this.#highWater) {
          const bytes = this.#withheld;
          this.#withheld = 0;
          this.#grant(bytes);
        }
        yield chunk;
        continue;
      }
      if (this.#ended) {
        if (this.#error) throw this.#error;
        return;
      }
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
      this.#wake = undefined;
    }
  }
}
