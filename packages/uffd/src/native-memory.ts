import { check } from "./errors.ts";
import { libc, nativeView } from "./libc.ts";
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from "./linux.ts";

/** Anonymous native memory with a stable address, for kernel structs passed by pointer. */
export class NativeMemory {
  readonly address: number;
  readonly length: number;
  readonly bytes: Buffer;
  readonly view: DataView;
  #freed = false;

  constructor(length: number) {
    this.length = length;
    this.address = check(
      "mmap",
      libc.mmap(0, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
    );
    this.bytes = nativeView(this.address, length);
    this.view = new DataView(this.bytes.buffer, this.bytes.byteOffset, length);
  }

  // Two 32-bit halves instead of a BigInt: these run several times per page fault, and a BigInt is an
  // allocation each time. Values are addresses and sizes, non-negative and below 2^53.
  u64(offset: number): number {
    return this.view.getUint32(offset, true) + this.view.getUint32(offset + 4, true) * 0x1_0000_0000;
  }

  setU64(offset: number, value: number): void {
    if (!Number.isSafeInteger(value) || value < 0)
      throw new RangeError(`setU64: ${value} is not a non-negative safe integer`);
    this.view.setUint32(offset, value % 0x1_0000_0000, true);
    this.view.setUint32(offset + 4, Math.floor(value / 0x1_0000_0000), true);
  }

  free(): void {
    if (this.#freed) return;
    this.#freed = true;
    libc.munmap(this.address, this.length);
  }
}
