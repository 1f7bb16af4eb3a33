import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { GuestRegion } from "./handshake.ts";
import { MAX_EVENTS, openNativeHelper, prepareNativeHelper } from "./helper-binding.ts";
import type { Layers } from "./layers.ts";
import { PAGE_2M, PAGE_4K, UFFD_EVENT_PAGEFAULT, UFFD_EVENT_REMOVE } from "./linux.ts";
import { NativeMemory } from "./native-memory.ts";
import { RemovedPages } from "./removed-pages.ts";
import { buildTestNativeHelper } from "./test-native-helper.ts";

const ENOTTY = 25;
const region = (base: number, pages: number, pageSize = PAGE_4K, offset = 0): GuestRegion => ({
  base,
  size: pages * pageSize,
  offset,
  pageSize,
});

describe("RemovedPages: one bit per guest page, sized by the regions", () => {
  it("marks whole pages inside the regions only, per region", () => {
    const a = region(0x10_0000, 64);
    const b = region(0x100_0000, 2, PAGE_2M, 64 * PAGE_4K);
    const removed = new RemovedPages([a, b]);
    try {
      expect(removed.bits).toBe(64 + 1024);
      // Starts before the region, ends inside it.
      removed.add(0x0, a.base + 3 * PAGE_4K);
      // Partial pages at both edges are not marked.
      removed.add(a.base + 10 * PAGE_4K + 1, a.base + 13 * PAGE_4K - 1);
      // The second region's first huge page.
      removed.add(b.base, b.base + PAGE_2M);
      const marked = (r: GuestRegion, pages: number, size: number) =>
        Array.from({ length: pages }, (_, i) => i).filter((i) => removed.has(r, r.base + i * size));
      expect(marked(a, 64, PAGE_4K)).toEqual([0, 1, 2, 11]);
      expect(marked(b, 2, PAGE_2M)).toEqual([0]);
      // Beyond every region: ignored, nothing else changes.
      removed.add(b.base + b.size, b.base + 10 * b.size);
      expect(marked(b, 2, PAGE_2M)).toEqual([0]);
    } finally {
      removed.free();
    }
  });

  it("takes a range over a whole large region in one fill, and a million single pages without growing", () => {
    const big = region(0x7f00_0000_0000, 2_000_000);
    const removed = new RemovedPages([big]);
    try {
      for (let i = 0; i < 1_000_000; i++)
        removed.add(big.base + 2 * i * PAGE_4K, big.base + (2 * i + 1) * PAGE_4K);
      expect(removed.has(big, big.base + 123_456 * PAGE_4K)).toBe(true);
      expect(removed.has(big, big.base + 123_457 * PAGE_4K)).toBe(false);
      removed.add(big.base, big.base + big.size);
      expect(removed.has(big, big.base + 1_999_999 * PAGE_4K)).toBe(true);
      expect(removed.bits).toBe(2_000_000);
    } finally {
      removed.free();
    }
  });
});

const nativeHelper = buildTestNativeHelper();
afterAll(() => nativeHelper.remove());

describe.skipIf(!nativeHelper.path)(
  "the native helper and REMOVE events (batches replayed from a file)",
  () => {
    const base = 0x7e00_0000_0000;
    const guest = region(base, 40_000);

    /** Writes uffd_msg structs to a file whose fd stands in for the userfaultfd: read() returns them, and
     * every ioctl on it fails with ENOTTY, which shows which faults the helper tried to serve itself. */
    function replay(
      messages: ([typeof UFFD_EVENT_REMOVE, number, number] | [typeof UFFD_EVENT_PAGEFAULT, number])[],
    ) {
      const dir = mkdtempSync(join(tmpdir(), "sbx-uffd-replay-"));
      const file = join(dir, "events");
      const bytes = Buffer.alloc(messages.length * 32);
      messages.forEach((message, i) => {
        bytes.writeUInt8(message[0], i * 32);
        if (message[0] === UFFD_EVENT_REMOVE) {
          bytes.writeBigUInt64LE(BigInt(message[1]), i * 32 + 8);
          bytes.writeBigUInt64LE(BigInt(message[2]), i * 32 + 16);
        } else bytes.writeBigUInt64LE(BigInt(message[1]), i * 32 + 16);
      });
      writeFileSync(file, bytes);
      const fd = openSync(file, "r");
      const cleanups: (() => void)[] = [];
      const events = new NativeMemory(MAX_EVENTS * 32);
      const removed = new RemovedPages([guest]);
      const source = new NativeMemory(PAGE_4K);
      prepareNativeHelper(nativeHelper.path as string);
      const helper = openNativeHelper(nativeHelper.path as string, cleanups);
      const layers: Layers = {
        size: guest.size,
        addresses: [source.address],
        layerOfPage: 0,
        sourceFor: () => 0,
        absentChunk: () => undefined,
        installChunk: () => ({ offset: 0, length: 0 }),
      };
      const batch = helper.batchServer([guest], layers, removed, () => {});
      const release = () => {
        for (const cleanup of cleanups) cleanup();
        events.free();
        removed.free();
        source.free();
        closeSync(fd);
        rmSync(dir, { recursive: true, force: true });
      };
      /** Calls the helper until it returns a batch for JS (or gives up after `calls`). */
      const nextBatch = (calls = 100) => {
        for (let i = 0; i < calls; i++) {
          const count = batch.serveBatch(fd, events.address, MAX_EVENTS, 0);
          if (count !== 0) return count;
        }
        return 0;
      };
      return { batch, removed, nextBatch, release };
    }

    it("applies a batch's REMOVE before the fault behind it: that fault goes to JS for zeros, not to the file", () => {
      const { batch, removed, nextBatch, release } = replay([
        [UFFD_EVENT_REMOVE, base, base + 2 * PAGE_4K],
        [UFFD_EVENT_PAGEFAULT, base + PAGE_4K + 123], // inside the range just removed
        [UFFD_EVENT_PAGEFAULT, base + 5 * PAGE_4K], // outside it: served from the file
      ]);
      try {
        expect(nextBatch()).toBe(3);
        expect([batch.status(0), batch.status(1), batch.status(2)]).toEqual([4, 2, -ENOTTY]);
        expect(batch.takeStats().removes).toBe(1);
        expect(removed.has(guest, base + PAGE_4K)).toBe(true);
        expect(removed.has(guest, base + 2 * PAGE_4K)).toBe(false);
      } finally {
        release();
      }
    });

    it("after 10,000 REMOVE ranges still serves faults outside them itself, and hands only removed pages to JS", () => {
      const removes = Array.from(
        { length: 10_000 },
        (_, i) => [UFFD_EVENT_REMOVE, base + 2 * i * PAGE_4K, base + (2 * i + 1) * PAGE_4K] as const,
      );
      const { batch, nextBatch, release } = replay([
        ...removes.map((m) => [...m] as [typeof UFFD_EVENT_REMOVE, number, number]),
        [UFFD_EVENT_PAGEFAULT, base + 30_000 * PAGE_4K],
        [UFFD_EVENT_PAGEFAULT, base + 9_999 * PAGE_4K], // odd page: not removed
        [UFFD_EVENT_PAGEFAULT, base + 19_998 * PAGE_4K], // even page below 20,000: removed
      ]);
      try {
        const count = nextBatch();
        expect(count).toBeGreaterThanOrEqual(3);
        const statuses = Array.from({ length: count }, (_, i) => batch.status(i)).slice(-3);
        expect(statuses).toEqual([-ENOTTY, -ENOTTY, 2]);
        // Every REMOVE was applied by the helper (its stats add up across calls until taken).
        expect(batch.takeStats().removes).toBe(10_000);
      } finally {
        release();
      }
    });
  },
);
