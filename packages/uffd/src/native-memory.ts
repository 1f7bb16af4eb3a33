import { check } from "./errors.ts";
import { libc, MAP_ANONYMOUS, MAP_PRIVATE, nativeView, PROT_READ, PROT_WRITE } from "./libc.ts";

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

  u64(offset: number): number {
    return Number(this.view.getBigUint64(offset, true));
  }

  setU64(offset: number, value: number): void {
    this.view.setBigUint64(offset, BigInt(value), true);
  }

  free(): void {
    if (this.#freed) return;
    this.#freed = true;
    libc.munmap(this.address, this.length);
  }
}
