// Reads a socket into large slabs instead of net's default of a fresh 64 KiB buffer per read. With
// net's default, the host does a read(2) and a JavaScript callback per 64 KiB, and each read sends
// the agent a TCP window update: at 1 GB/s that is 16k of each per second, and it left the host
// client, not the agent, the bottleneck of a large stdout. Here one read takes whatever the kernel
// has queued, up to the rest of a slab (1 MiB), so a busy stream costs a handful of reads per MiB.
//
// A slab region, once handed out, is never read into again: a consumer may keep any chunk. A short
// read is copied out instead (the region is then reused), so a small chunk kept for long pins only
// its own bytes; a large one pins at most its slab.
import type { Socket } from "node:net";

export const SLAB_BYTES = 1 << 20;
/** When less than this is left in a slab, the next read starts a new one. */
export const MIN_READ_BYTES = 128 << 10;
/** Reads shorter than this are copied out of the slab. */
export const COPY_BELOW_BYTES = 32 << 10;
/** What may arrive before anyone takes the socket's bytes (the hello and a little more). */
const MAX_UNCLAIMED_BYTES = 1 << 20;

export type ChunkSink = (chunk: Buffer) => void;

export class SlabReader {
  #slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
  #offset = 0;
  #sink: ChunkSink | undefined;
  #unclaimed: Buffer[] = [];
  #unclaimedBytes = 0;
  #overflow: (() => void) | undefined;

  /** For `net.connect({ onread })`: where each read goes, and what to do with what it read. */
  readonly onread = {
    buffer: (): Buffer => this.#nextBuffer(),
    // true: keep reading (false would stop the socket's reads; the protocol's windows bound the peer).
    callback: (bytes: number, buffer: Buffer): boolean => {
      this.#deliver(bytes, buffer);
      return true;
    },
  };

  /** Called (once) when more than the bound arrives while nothing takes the bytes. */
  onOverflow(handler: () => void): void {
    this.#overflow = handler;
  }

  /** Sends every chunk to `sink`, starting with those that arrived while nobody took them. */
  take(sink: ChunkSink): void {
    this.#sink = sink;
    while (this.#sink === sink && this.#unclaimed.length > 0) {
      const chunk = this.#unclaimed.shift() as Buffer;
      this.#unclaimedBytes -= chunk.length;
      sink(chunk);
    }
  }

  /** Stops delivering: chunks wait (bounded) for the next take. */
  release(): void {
    this.#sink = undefined;
  }

  /** Puts bytes back in front of what waits for the next take (what followed a handshake line). */
  unshift(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#unclaimed.unshift(chunk);
    this.#unclaimedBytes += chunk.length;
  }

  #nextBuffer(): Buffer {
    if (SLAB_BYTES - this.#offset < MIN_READ_BYTES) {
      this.#slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
      this.#offset = 0;
    }
    return this.#slab.subarray(this.#offset);
  }

  #deliver(bytes: number, buffer: Buffer): void {
    let chunk: Buffer;
    if (bytes < COPY_BELOW_BYTES) {
      chunk = Buffer.allocUnsafe(bytes);
      buffer.copy(chunk, 0, 0, bytes);
    } else {
      chunk = buffer.subarray(0, bytes);
      this.#offset += bytes;
    }
    const sink = this.#sink;
    if (sink) {
      sink(chunk);
      return;
    }
    this.#unclaimed.push(chunk);
    this.#unclaimedBytes += chunk.length;
    if (this.#unclaimedBytes > MAX_UNCLAIMED_BYTES) {
      this.#unclaimed = [];
      this.#unclaimedBytes = 0;
      const overflow = this.#overflow;
      this.#overflow = undefined;
      overflow?.();
    }
  }
}

const readers = new WeakMap<Socket, SlabReader>();

/** net.connect options that read through a new SlabReader; `attachSlabReader` ties it to the socket. */
export function slabReaderOptions(): { reader: SlabReader; onread: SlabReader["onread"] } {
  const reader = new SlabReader();
  return { reader, onread: reader.onread };
}

export function attachSlabReader(socket: Socket, reader: SlabReader): void {
  readers.set(socket, reader);
  reader.onOverflow(() => socket.destroy());
}

/** The socket's SlabReader, or undefined for a socket that emits "data" (a custom transport's). */
export function slabReaderOf(socket: Socket): SlabReader | undefined {
  return readers.get(socket);
}

/** Takes a socket's bytes however it delivers them: through its SlabReader or as "data" events. */
export function onSocketChunks(socket: Socket, sink: ChunkSink): void {
  const reader = slabReaderOf(socket);
  if (reader) reader.take(sink);
  else socket.on("data", sink);
}
