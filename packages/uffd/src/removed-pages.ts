// Guest pages a balloon removed (UFFD_EVENT_REMOVE): a fault there must get zeros, never the memory
// file's old contents. One bit per 4 KiB page of every region, in native memory the C batch helper
// reads and writes too. The guest decides how many REMOVE events arrive, so the structure is sized by
// the regions Firecracker sent, never by the events: a million REMOVEs cost no more memory than one,
// and a lookup is one bit whatever came before (a list of ranges grew with every event and was
// scanned on every fault).
import type { GuestRegion } from "./handshake.ts";
import { PAGE_4K } from "./linux.ts";
import { NativeMemory } from "./native-memory.ts";

export class RemovedPages {
  readonly #regions: readonly GuestRegion[];
  /** Bit index of each region's first page. */
  readonly #firstBits: readonly number[];
  readonly #firstBitOf = new Map<GuestRegion, number>();
  readonly #memory: NativeMemory;
  readonly #bytes: Buffer;
  /** Bits in the map: the regions' 4 KiB pages, in region order. */
  readonly bits: number;

  constructor(regions: readonly GuestRegion[]) {
    this.#regions = regions;
    const firstBits: number[] = [];
    let bits = 0;
    for (const region of regions) {
      firstBits.push(bits);
      this.#firstBitOf.set(region, bits);
      bits += Math.ceil(region.size / PAGE_4K);
    }
    this.#firstBits = firstBits;
    this.bits = bits;
    // Anonymous memory: pages of the map the guest never removes from cost nothing.
    this.#memory = new NativeMemory(Math.max(8, Math.ceil(bits / 8)));
    this.#bytes = this.#memory.bytes;
  }

  /** Address of the bitmap (bit b is byte b >> 3, bit b & 7), for the native helper. */
  get address(): number {
    return this.#memory.address;
  }

  /** The bit of `region`'s first page, as the native helper is told per region. */
  firstBitOf(regionIndex: number): number {
    return this.#firstBits[regionIndex] ?? 0;
  }

  /**
   * Marks the whole 4 KiB pages of [start, end) inside the regions; parts outside every region are
   * ignored (no fault can be served there anyway). Partial pages at the edges are left alone: the
   * kernel removes whole pages, and a page marked by mistake would read back as zeros.
   */
  add(start: number, end: number): void {
    this.#regions.forEach((region, index) => {
      const from = Math.max(start, region.base);
      const to = Math.min(end, region.base + region.size);
      if (from >= to) return;
      const first = Math.ceil((from - region.base) / PAGE_4K);
      const last = Math.floor((to - region.base) / PAGE_4K);
      if (first < last)
        this.#setBits((this.#firstBits[index] as number) + first, (this.#firstBits[index] as number) + last);
    });
  }

  /** Whether the page at `page` (an address inside `region`) was removed. */
  has(region: GuestRegion, page: number): boolean {
    const firstBit = this.#firstBitOf.get(region);
    if (firstBit === undefined) return false;
    const bit = firstBit + Math.floor((page - region.base) / PAGE_4K);
    return ((this.#bytes[bit >> 3] as number) & (1 << (bit & 7))) !== 0;
  }

  #setBits(from: number, to: number): void {
    let bit = from;
    for (; bit < to && bit & 7; bit++)
      this.#bytes[bit >> 3] = (this.#bytes[bit >> 3] as number) | (1 << (bit & 7));
    const wholeBytes = (to - bit) >> 3;
    if (wholeBytes > 0) {
      this.#bytes.fill(0xff, bit >> 3, (bit >> 3) + wholeBytes);
      bit += wholeBytes * 8;
    }
    for (; bit < to; bit++) this.#bytes[bit >> 3] = (this.#bytes[bit >> 3] as number) | (1 << (bit & 7));
  }

  free(): void {
    this.#memory.free();
  }
}
