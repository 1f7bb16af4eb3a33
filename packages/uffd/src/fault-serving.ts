// What both fault loops share once Firecracker's handshake is in: the guest's regions and the memory
// layers, the removed-page map, dirty tracking, the working-set prefetch, lazy chunks, and serving one
// fault. The loops (fault-loop-native.ts, fault-loop-ffi.ts) only decide when to read, serve and wait.
import { UffdError } from "./errors.ts";
import type { FaultMetrics } from "./fault-metrics.ts";
import type { GuestRegion } from "./handshake.ts";
import type { Layers } from "./layers.ts";
import type { LazyChunks } from "./lazy-chunks.ts";
import { libc } from "./libc.ts";
import {
  EAGAIN,
  EEXIST,
  ENOENT,
  ESRCH,
  PAGE_2M,
  PAGE_4K,
  POLLERR,
  POLLHUP,
  POLLIN,
  POLLNVAL,
} from "./linux.ts";
import { NativeMemory } from "./native-memory.ts";
import type { Poller } from "./poller.ts";
import { RemovedPages } from "./removed-pages.ts";
import type { UffdEvent, Userfaultfd } from "./userfaultfd.ts";
import { METRIC, type StopReason, type WorkerMessage } from "./worker-protocol.ts";

/** A missing-page fault waiting to be served. */
export interface QueuedFault {
  address: number;
  write: boolean;
}

/** No faults for this long after some were served: the restore's burst is over. */
const QUIET_MS = 100;
// A working set is given up as stale once the guest faulted this many pages it does not list, and more
// than STALE_RATIO times as many as pages it lists (a guest racing the prefetch faults listed ones).
const STALE_MIN_FAULTS = 256;
const STALE_RATIO = 3;
// A REMOVE pending makes UFFDIO_COPY fail with EAGAIN until the loop reads it; a list that keeps hitting
// that is given up on rather than spun on (it only ever costs time).
const PREFETCH_MAX_EAGAIN = 10_000;

export interface FaultServingOptions {
  uffd: Userfaultfd;
  /** The connection to Firecracker: its hang-up ends the loop. */
  connection: number;
  /** Bumped by the server's close(). */
  wakeFd: number;
  regions: GuestRegion[];
  layers: Layers;
  trackDirty: boolean;
  /** One byte per 4 KiB of the memory file, shared with the server (dirtyPages()). */
  dirty: Uint8Array;
  /** Memory-file offsets of served faults, shared with the server (faultTrace()), and its length. */
  trace: Float64Array;
  traceCount: Int32Array;
  workingSet: readonly { offset: number; length: number }[];
  /** One byte per page the working set lists; undefined when the stale check is off. */
  listed: Uint8Array | undefined;
  lazy: LazyChunks | undefined;
  metrics: FaultMetrics;
  poller: Poller;
  post: (message: WorkerMessage) => void;
  cleanups: (() => void)[];
}

export class FaultServing {
  readonly uffd: Userfaultfd;
  readonly regions: GuestRegion[];
  readonly layers: Layers;
  /** Shared with the native helper, which marks the REMOVEs it reads there itself. */
  readonly removed: RemovedPages;
  readonly trackDirty: boolean;
  readonly dirty: Uint8Array;
  readonly workingSet: readonly { offset: number; length: number }[];
  readonly metrics: FaultMetrics;
  readonly queued: QueuedFault[] = [];
  /** Whether the working set is still being copied in between faults. */
  prefetching: boolean;
  /** Whether any fault was served: the first quiet moment after that is announced once. */
  servedAny = false;
  readonly #options: FaultServingOptions;
  readonly #drain = new NativeMemory(4096);
  #zeroHuge = 0;
  #zeroSmall = 0;
  #faultsListed = 0;
  #faultsUnlisted = 0;
  #prefetchEagain = 0;
  #quietAnnounced = false;
  // The pure-ffi prefetch's cursor: range index and byte offset inside it.
  #cursorRange = 0;
  #cursorByte = 0;

  constructor(options: FaultServingOptions) {
    this.#options = options;
    this.uffd = options.uffd;
    this.regions = options.regions;
    this.layers = options.layers;
    this.trackDirty = options.trackDirty;
    this.dirty = options.dirty;
    this.workingSet = options.workingSet;
    this.metrics = options.metrics;
    this.prefetching = options.workingSet.length > 0;
    this.removed = new RemovedPages(options.regions);
    const removed = this.removed;
    options.cleanups.push(
      () => removed.free(),
      () => this.#drain.free(),
    );
  }

  regionOf(address: number): GuestRegion | undefined {
    for (const region of this.regions)
      if (address >= region.base && address < region.base + region.size) return region;
    return undefined;
  }

  fileOffsetOf(region: GuestRegion, page: number): number {
    return region.offset + (page - region.base);
  }

  #markDirty(region: GuestRegion, page: number): void {
    const first = this.fileOffsetOf(region, page) / PAGE_4K;
    this.dirty.fill(1, first, first + region.pageSize / PAGE_4K);
  }

  #zeroSource(pageSize: number): number {
    const zeroed = (size: number) => {
      const memory = new NativeMemory(size);
      this.#options.cleanups.push(() => memory.free());
      return memory.address;
    };
    if (pageSize === PAGE_2M) {
      if (!this.#zeroHuge) this.#zeroHuge = zeroed(PAGE_2M);
      return this.#zeroHuge;
    }
    if (!this.#zeroSmall) this.#zeroSmall = zeroed(PAGE_4K);
    return this.#zeroSmall;
  }

  /**
   * Installs one page; the errno, or 0. With dirty tracking a page arrives write-protected unless the
   * fault that asked for it was a write (then it is dirty already and needs no second fault).
   */
  #copyOrZero(region: GuestRegion, page: number, write: boolean): number {
    const zero = this.removed.has(region, page);
    const protect = this.trackDirty && !write;
    if (this.trackDirty && write) this.#markDirty(region, page);
    if (zero && region.pageSize !== PAGE_2M && !protect) {
      const errno = this.uffd.zeropage(page, region.pageSize);
      if (errno === 0) this.metrics.add(METRIC.zeroPages);
      return errno;
    }
    // hugetlb has no UFFDIO_ZEROPAGE, and it cannot write-protect: zeros are copied from a zeroed page.
    const source = zero
      ? this.#zeroSource(region.pageSize)
      : this.layers.sourceFor(this.fileOffsetOf(region, page));
    const errno = this.uffd.copy(page, source, region.pageSize, protect);
    if (errno === 0) {
      this.metrics.add(zero ? METRIC.zeroPages : METRIC.pagesCopied);
      this.metrics.add(METRIC.bytes, region.pageSize);
    }
    return errno;
  }

  /** A write to a write-protected page: record it, then let the write through. */
  #onWriteProtectFault(address: number): void {
    const region = this.regionOf(address);
    if (!region) return;
    const page = address - (address % region.pageSize);
    this.#markDirty(region, page);
    const errno = this.uffd.writeProtect(page, region.pageSize, false);
    if (errno !== 0 && errno !== ENOENT)
      throw new UffdError(
        "FAULT_FAILED",
        `clearing write-protection at 0x${page.toString(16)} failed: errno ${errno}`,
        { address: page, errno, syscall: "ioctl(UFFDIO_WRITEPROTECT)" },
      );
    this.metrics.add(METRIC.writeProtectFaults);
  }

  /** Counts a served fault against the working set, and appends it to the trace. */
  recordTrace(offset: number): void {
    const listed = this.#options.listed;
    if (listed && this.prefetching) {
      if (listed[Math.floor(offset / PAGE_4K)]) this.#faultsListed++;
      else this.#faultsUnlisted++;
    }
    const { trace, traceCount } = this.#options;
    const n = traceCount[0] as number;
    if (n < trace.length) {
      trace[n] = offset;
      Atomics.store(traceCount, 0, n + 1);
    }
  }

  /**
   * Copies the pages of a prefetch list (memory-file offsets) in before the guest asks for them;
   * false when the peer is gone. Pages whose chunk is not here yet are skipped.
   */
  prefetchOffsets(offsets: readonly number[]): boolean {
    for (const offset of offsets) {
      const region = this.regions.find((r) => offset >= r.offset && offset < r.offset + r.size);
      if (!region || this.layers.absentChunk(offset)) continue;
      const page = region.base + (offset - region.offset) - ((offset - region.offset) % region.pageSize);
      const errno = this.#copyOrZero(region, page, false);
      if (errno === 0) this.metrics.add(METRIC.prefetched);
      else if (errno === ESRCH) return false;
      else if (errno !== EEXIST && errno !== EAGAIN)
        throw new UffdError("SYSCALL_FAILED", `ioctl(UFFDIO_COPY) prefetch failed: errno ${errno}`, {
          errno,
          syscall: "ioctl(UFFDIO_COPY)",
        });
    }
    return true;
  }

  /** The prefetch is over, done or given up: faults alone from here. */
  #endPrefetch(complete: boolean, why?: string): void {
    this.prefetching = false;
    if (complete) this.metrics.flag(METRIC.prefetchComplete);
    if (why) this.#options.post({ type: "warning", message: `working-set prefetch stopped: ${why}` });
  }

  /** What a prefetch slice's result says: go on (true), or the peer is gone (false). */
  afterSlice(result: number): boolean {
    if (this.#faultsUnlisted >= STALE_MIN_FAULTS && this.#faultsUnlisted > STALE_RATIO * this.#faultsListed) {
      this.metrics.flag(METRIC.prefetchStale);
      this.#endPrefetch(
        false,
        `the guest faulted ${this.#faultsUnlisted} pages its working set does not list (and ${this.#faultsListed} it does): the working set is stale; record it again`,
      );
      return true;
    }
    if (result === 0) this.#endPrefetch(true);
    else if (result === -EAGAIN) {
      this.metrics.add(METRIC.eagain);
      if (++this.#prefetchEagain > PREFETCH_MAX_EAGAIN)
        this.#endPrefetch(false, "the guest's memory map kept changing");
    } else if (result === -ESRCH) return false;
    else if (result < 0) this.#endPrefetch(false, `UFFDIO_COPY failed with errno ${-result}`);
    return true;
  }

  /** Pure ffi: one UFFDIO_COPY per page, `maxPages` at most; returns as sbx_uffd_prefetch does. */
  prefetchSliceFfi(maxPages: number): number {
    let budget = maxPages;
    const { workingSet, metrics } = this;
    while (this.#cursorRange < workingSet.length) {
      const range = workingSet[this.#cursorRange] as { offset: number; length: number };
      const at = range.offset + this.#cursorByte;
      if (at >= range.offset + range.length) {
        this.#cursorRange++;
        this.#cursorByte = 0;
        continue;
      }
      if (budget-- <= 0) return 1;
      const region = this.regions.find((r) => at >= r.offset && at - r.offset < r.size);
      if (!region) {
        this.#cursorByte = Math.floor(at / PAGE_4K) * PAGE_4K + PAGE_4K - range.offset;
        metrics.add(METRIC.prefetchSkipped);
        continue;
      }
      const inRegion = at - region.offset;
      const page = region.base + inRegion - (inRegion % region.pageSize);
      const offset = this.fileOffsetOf(region, page);
      const next = offset + region.pageSize - range.offset;
      // Removed, or its chunk not here yet (it is copied in when it arrives).
      if (this.removed.has(region, page) || this.layers.absentChunk(offset)) {
        this.#cursorByte = next;
        metrics.add(METRIC.prefetchSkipped);
        continue;
      }
      const errno = this.uffd.copy(page, this.layers.sourceFor(offset), region.pageSize, this.trackDirty);
      if (errno === EAGAIN) return -EAGAIN; // the cursor stays: this page is tried again
      this.#cursorByte = next;
      if (errno === 0) {
        metrics.add(METRIC.prefetched);
        metrics.add(METRIC.bytes, region.pageSize);
      } else if (errno === EEXIST) metrics.add(METRIC.prefetchPresent);
      else return -errno;
    }
    return 0;
  }

  /** Takes one event: REMOVEs and write-protect faults at once, missing-page faults queued. */
  take(event: UffdEvent): void {
    if (event.kind === "pagefault") {
      if (event.wp) this.#onWriteProtectFault(event.address);
      else this.queued.push({ address: event.address, write: event.write });
    } else if (event.kind === "remove") {
      this.removed.add(event.start, event.end);
      this.metrics.add(METRIC.removes);
    }
  }

  /** Reads what is pending and takes it (see Userfaultfd.read for `checked`); how many events. */
  drain(checked = true): number {
    const count = this.uffd.read(checked);
    for (let i = 0; i < count; i++) this.take(this.uffd.event(i));
    return count;
  }

  /** Serves one fault; false when the peer's memory is gone. */
  serveFault({ address, write }: QueuedFault): boolean {
    const region = this.regionOf(address);
    if (!region)
      throw new UffdError(
        "FAULT_FAILED",
        `fault at 0x${address.toString(16)} is outside every region Firecracker sent`,
        { address },
      );
    const page = address - (address % region.pageSize);
    // A page of a lazy layer whose chunk is not here: parked, and the loop goes on with other faults.
    const lazy = this.#options.lazy;
    const absent =
      lazy && !this.removed.has(region, page)
        ? this.layers.absentChunk(this.fileOffsetOf(region, page))
        : undefined;
    if (absent) {
      lazy?.defer(absent, { address, write });
      this.metrics.add(METRIC.faultsDeferred);
      return true;
    }
    const started = performance.now();
    for (let attempt = 0; ; attempt++) {
      const errno = this.#copyOrZero(region, page, write);
      if (errno === 0) {
        this.recordTrace(this.fileOffsetOf(region, page));
        break;
      }
      if (errno === EEXIST) {
        this.metrics.add(METRIC.eexist);
        if (this.workingSet.length > 0) this.metrics.add(METRIC.prefetchHits);
        break;
      }
      if (errno === ESRCH) return false;
      if (errno === EAGAIN && attempt < 10_000) {
        // The peer's memory map is changing (a REMOVE is pending): read those events first, then retry.
        this.metrics.add(METRIC.eagain);
        this.drain();
        continue;
      }
      throw new UffdError(
        "FAULT_FAILED",
        `serving the fault at 0x${page.toString(16)} failed: errno ${errno}`,
        {
          address: page,
          errno,
          syscall: "ioctl(UFFDIO_COPY)",
        },
      );
    }
    this.metrics.add(METRIC.faults);
    this.metrics.latency((performance.now() - started) * 1e6);
    return true;
  }

  /** Serves every queued fault, in order; false when the peer's memory is gone. */
  serveQueued(): boolean {
    for (let fault = this.queued.shift(); fault; fault = this.queued.shift())
      if (!this.serveFault(fault)) return false;
    return true;
  }

  /** Maps the chunks that arrived, serves the faults parked on them and copies in their working set. */
  #takeArrivals(lazy: LazyChunks): boolean {
    libc.read(lazy.notifyFd, this.#drain.address, 8); // resets the eventfd; empty is fine
    return lazy.takeArrivals(({ faults, workingSetPages }) => {
      this.metrics.add(METRIC.chunksInstalled);
      for (const fault of faults) if (!this.serveFault(fault)) return false;
      return this.prefetchOffsets(workingSetPages);
    });
  }

  /**
   * What poll says about the peer, the wake fd and arrived chunks within `timeoutMs`: a reason to
   * stop, "uffd" when events wait, or undefined to go on.
   */
  checkPeer(timeoutMs: number): StopReason | "uffd" | undefined {
    const { connection, wakeFd, lazy, poller } = this.#options;
    const [uffdEvents = 0, connectionEvents = 0, wake, arrived = 0] = poller.poll(
      lazy ? [this.uffd.fd, connection, wakeFd, lazy.notifyFd] : [this.uffd.fd, connection, wakeFd],
      timeoutMs,
    );
    if (wake) return "closed";
    if (connectionEvents & (POLLHUP | POLLERR | POLLNVAL)) return "peer-exited";
    if (connectionEvents & POLLIN) {
      const got = libc.read(connection, this.#drain.address, 4096);
      if (got.value <= 0) return "peer-exited"; // EOF: Firecracker is gone
    }
    if (lazy && arrived & POLLIN && !this.#takeArrivals(lazy)) return "peer-exited";
    if (uffdEvents & POLLIN) return "uffd";
    if (uffdEvents & (POLLERR | POLLHUP | POLLNVAL)) return "peer-exited";
    return undefined;
  }

  /**
   * Blocks until the peer, the wake fd, an arrived chunk or a fault needs the loop; announces the
   * first long quiet after faults were served (the server refills its warm workers then, not during
   * the restore's burst, when a worker's start-up would compete with the fault loop for the cores).
   */
  waitIdle(): StopReason | "uffd" | undefined {
    if (this.servedAny && !this.#quietAnnounced) {
      const state = this.checkPeer(QUIET_MS);
      if (state !== undefined) return state;
      this.#quietAnnounced = true;
      this.#options.post({ type: "quiet" });
    }
    return this.checkPeer(-1);
  }
}
