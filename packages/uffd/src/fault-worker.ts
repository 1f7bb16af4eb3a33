// The page-fault server's worker thread: accept one connection, validate Firecracker's handshake, then
// serve faults until woken, until the peer hangs up, or until a fault cannot be served. Blocking in
// poll() here never blocks the caller's event loop. The worker owns every fd it accepts or receives
// and closes them all before it reports that it stopped, so the main thread never races it on an fd.
import { readFileSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import { check, UffdError } from "./errors.ts";
import { type GuestRegion, type Handshake, parseHandshake } from "./handshake.ts";
import { MAX_EVENTS, type NativeHelperBinding, openNativeHelper } from "./helper-binding.ts";
import {
  PAGE_2M,
  PAGE_4K,
  UFFD_EVENT_PAGEFAULT,
  UFFD_EVENT_REMOVE,
  UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
  UFFD_PAGEFAULT_FLAG_WP,
  UFFD_PAGEFAULT_FLAG_WRITE,
  UFFDIO_COPY,
  UFFDIO_COPY_MODE_WP,
  UFFDIO_REGISTER,
  UFFDIO_REGISTER_MODE_MISSING,
  UFFDIO_REGISTER_MODE_WP,
  UFFDIO_WRITEPROTECT,
  UFFDIO_ZEROPAGE,
} from "./kernel.ts";
import { type Layers, mapLayers } from "./layers.ts";
import { LazyChunks } from "./lazy-chunks.ts";
import {
  EAGAIN,
  EEXIST,
  EINTR,
  ENOENT,
  ESRCH,
  F_DUPFD_CLOEXEC,
  libc,
  libcUnchecked,
  MADV_WILLNEED,
  POLLERR,
  POLLHUP,
  POLLIN,
  POLLNVAL,
  SO_PEERCRED,
  SOCK_CLOEXEC,
  SOL_SOCKET,
  SYS_PIDFD_OPEN,
} from "./libc.ts";
import { NativeMemory } from "./native-memory.ts";
import { RemovedPages } from "./removed-pages.ts";
import { recvWithFds } from "./scm-rights.ts";
import { METRIC, type WorkerConfig, type WorkerMessage } from "./worker-protocol.ts";

const port = parentPort!;
// Set by start(): from workerData, or, for a worker started ahead of time (a warm pool), from its first
// message. Loading this module takes ~150 ms, which would otherwise sit between Firecracker's connect
// and its first fault.
let config: WorkerConfig;
let counters: Float64Array;
let histogram: Int32Array;
let dirty: Uint8Array;
let trace: Float64Array;
let traceCount: Int32Array;

const post = (message: WorkerMessage) => port.postMessage(message);
const owned = new Set<number>();
const scratch = new NativeMemory(64 * 1024);
const cleanups: (() => void)[] = [];

// Scratch layout: pollfds at 0 (3 × 8 bytes), ucred at 64, socklen at 80, uffdio_copy at 128,
// uffdio_zeropage at 192, a one-page read buffer at 4096, the event batch at 8192.
const POLLFDS = 0;
const UCRED = 64;
const SOCKLEN = 80;
const COPY = 128;
const ZERO = 192;
const WP = 256;
const REGISTER = 320;
const DRAIN = 4096;
const EVENTS = 8192;
const EVENT_SIZE = 32;

type StopReason = "closed" | "peer-exited";

// How long the native helper spins on an empty userfaultfd before the loop falls back to poll(): a
// fault arriving within it costs no poll and no wake-up (the C baseline spins the same way).
const SPIN_NS = 200_000;
// Empty non-blocking reads the pure-ffi loop tries (~3 µs each) before it blocks in poll().
const SPIN_READS = 16;
// No faults for this long after some were served: the restore's burst is over (gaps inside a burst,
// while Firecracker finishes loading or the vCPU is descheduled, last a few milliseconds at most).
const QUIET_MS = 100;
// Working-set pages copied per call between reads of the userfaultfd: about 1 MiB, a few hundred µs on
// the native path, so a real fault waits at most that long behind the prefetch.
const PREFETCH_SLICE_PAGES = 256;
// The pure-ffi prefetch pays an ffi call per page: smaller slices keep a fault's wait alike.
const PREFETCH_SLICE_PAGES_FFI = 32;
// A working set is given up as stale once the guest faulted this many pages it does not list, and
// more than STALE_RATIO times as many as pages it lists (a guest racing the prefetch faults listed ones).
const STALE_MIN_FAULTS = 256;
const STALE_RATIO = 3;
// Ranges read ahead before the accept (one madvise each): a recorded set has a handful.
const READAHEAD_MAX_RANGES = 4096;
// A REMOVE pending makes UFFDIO_COPY fail with EAGAIN until the loop reads it; a list that keeps
// hitting that is given up on rather than spun on (it only ever costs time).
const PREFETCH_MAX_EAGAIN = 10_000;

function pollFor(fds: number[], timeoutMs: number): number[] {
  fds.forEach((fd, i) => {
    scratch.view.setInt32(POLLFDS + i * 8, fd, true);
    scratch.view.setInt16(POLLFDS + i * 8 + 4, POLLIN, true);
    scratch.view.setInt16(POLLFDS + i * 8 + 6, 0, true);
  });
  for (;;) {
    const result = libc.poll(scratch.address + POLLFDS, fds.length, timeoutMs);
    if (result.value === -1 && result.errno === EINTR) continue;
    check("poll", result);
    return fds.map((_, i) => scratch.view.getInt16(POLLFDS + i * 8 + 6, true));
  }
}

function acceptPeer(): number | StopReason {
  const [listening, wake] = pollFor([config.listenFd, config.wakeFd], config.acceptTimeoutMs);
  if (wake) return "closed";
  if (!listening)
    throw new UffdError(
      "ACCEPT_TIMEOUT",
      `nobody connected to ${config.socketPath} within ${config.acceptTimeoutMs} ms`,
    );
  const fd = check("accept4", libc.accept4(config.listenFd, 0, 0, SOCK_CLOEXEC));
  owned.add(fd);
  return fd;
}

function peerPid(connection: number): number {
  scratch.view.setInt32(SOCKLEN, 12, true);
  check(
    "getsockopt(SO_PEERCRED)",
    libc.getsockopt(connection, SOL_SOCKET, SO_PEERCRED, scratch.address + UCRED, scratch.address + SOCKLEN),
  );
  return scratch.view.getInt32(UCRED, true);
}

/** Serves faults until woken or until the peer goes away. */
function serve(
  uffd: number,
  connection: number,
  regions: GuestRegion[],
  layers: Layers,
  trackDirty: boolean,
  native: NativeHelperBinding | undefined,
  lazy: LazyChunks | undefined,
): StopReason {
  // Shared with the native helper, which marks the REMOVEs it reads there itself.
  const removed = new RemovedPages(regions);
  cleanups.push(() => removed.free());
  let zeroHuge = 0;
  let zeroSmall = 0;
  const view = scratch.view;
  const events = scratch.address + EVENTS;

  const regionOf = (address: number) => {
    for (const region of regions)
      if (address >= region.base && address < region.base + region.size) return region;
    return undefined;
  };

  const fileOffsetOf = (region: GuestRegion, page: number) => region.offset + (page - region.base);
  const markDirty = (region: GuestRegion, page: number) => {
    const first = fileOffsetOf(region, page) / PAGE_4K;
    dirty.fill(1, first, first + region.pageSize / PAGE_4K);
  };
  const zeroSource = (pageSize: number) => {
    if (pageSize === PAGE_2M) {
      if (!zeroHuge) {
        const zeroed = new NativeMemory(PAGE_2M);
        cleanups.push(() => zeroed.free());
        zeroHuge = zeroed.address;
      }
      return zeroHuge;
    }
    if (!zeroSmall) {
      const zeroed = new NativeMemory(PAGE_4K);
      cleanups.push(() => zeroed.free());
      zeroSmall = zeroed.address;
    }
    return zeroSmall;
  };

  /**
   * UFFDIO_COPY or UFFDIO_ZEROPAGE, the errno or 0, without paying for ffi-rs's errno on every fault.
   * The kernel writes -errno into the struct's result field for most failures; for the ones it returns
   * before writing it (EAGAIN while the peer's map changes, ESRCH once its mm is gone) the call is
   * repeated with errno, which is safe: installing a page twice is EEXIST the second time.
   */
  const installPage = (request: number, at: number, resultAt: number): number => {
    scratch.setU64(resultAt, 0);
    if (libcUnchecked.ioctl(uffd, request, scratch.address + at) === 0) return 0;
    const reported = view.getInt32(resultAt, true);
    if (reported < 0) return -reported;
    const result = libc.ioctl(uffd, request, scratch.address + at);
    return result.value === 0 ? 0 : result.errno;
  };

  /**
   * Installs one page; the errno, or 0. With dirty tracking a page arrives write-protected unless the
   * fault that asked for it was a write (then it is dirty already and needs no second fault).
   */
  const copyOrZero = (region: GuestRegion, page: number, write: boolean): number => {
    const zero = removed.has(region, page);
    const protect = trackDirty && !write;
    if (trackDirty && write) markDirty(region, page);
    if (zero && region.pageSize !== PAGE_2M && !protect) {
      scratch.setU64(ZERO, page);
      scratch.setU64(ZERO + 8, region.pageSize);
      scratch.setU64(ZERO + 16, 0);
      const errno = installPage(UFFDIO_ZEROPAGE, ZERO, ZERO + 24);
      if (errno === 0) counters[METRIC.zeroPages] = (counters[METRIC.zeroPages] ?? 0) + 1;
      return errno;
    }
    // hugetlb has no UFFDIO_ZEROPAGE, and it cannot write-protect: zeros are copied from a zeroed page.
    const source = zero ? zeroSource(region.pageSize) : layers.sourceFor(fileOffsetOf(region, page));
    scratch.setU64(COPY, page);
    scratch.setU64(COPY + 8, source);
    scratch.setU64(COPY + 16, region.pageSize);
    scratch.setU64(COPY + 24, protect ? UFFDIO_COPY_MODE_WP : 0);
    const errno = installPage(UFFDIO_COPY, COPY, COPY + 32);
    if (errno === 0) {
      if (zero) counters[METRIC.zeroPages] = (counters[METRIC.zeroPages] ?? 0) + 1;
      else counters[METRIC.pagesCopied] = (counters[METRIC.pagesCopied] ?? 0) + 1;
      counters[METRIC.bytes] = (counters[METRIC.bytes] ?? 0) + region.pageSize;
    }
    return errno;
  };

  /** A write to a write-protected page: record it, then let the write through. */
  const onWriteProtectFault = (address: number) => {
    const region = regionOf(address);
    if (!region) return;
    const page = address - (address % region.pageSize);
    markDirty(region, page);
    scratch.setU64(WP, page);
    scratch.setU64(WP + 8, region.pageSize);
    scratch.setU64(WP + 16, 0); // mode 0: clear write-protection and wake the faulting thread
    const result = libc.ioctl(uffd, UFFDIO_WRITEPROTECT, scratch.address + WP);
    if (result.value !== 0 && result.errno !== ENOENT)
      throw new UffdError(
        "FAULT_FAILED",
        `clearing write-protection at 0x${page.toString(16)} failed: errno ${result.errno}`,
        {
          address: page,
          errno: result.errno,
          syscall: "ioctl(UFFDIO_WRITEPROTECT)",
        },
      );
    counters[METRIC.writeProtectFaults] = (counters[METRIC.writeProtectFaults] ?? 0) + 1;
  };

  // Which pages the working set lists: a guest that keeps faulting pages it does not list is not the
  // guest it was recorded from, and copying the rest of a stale list only competes with its faults.
  const listed = listedPages(config.workingSet, layers.size);
  let faultsListed = 0;
  let faultsUnlisted = 0;
  const recordTrace = (offset: number) => {
    if (listed && prefetching) {
      if (listed[Math.floor(offset / PAGE_4K)]) faultsListed++;
      else faultsUnlisted++;
    }
    const n = traceCount[0] as number;
    if (n < trace.length) {
      trace[n] = offset;
      Atomics.store(traceCount, 0, n + 1);
    }
  };

  /** Copies the pages of a prefetch list (memory-file offsets) in before the guest asks for them. */
  const prefetch = (offsets: readonly number[]) => {
    for (const offset of offsets) {
      const region = regions.find((r) => offset >= r.offset && offset < r.offset + r.size);
      if (!region || layers.absentChunk(offset)) continue;
      const page = region.base + (offset - region.offset) - ((offset - region.offset) % region.pageSize);
      const errno = copyOrZero(region, page, false);
      if (errno === 0) counters[METRIC.prefetched] = (counters[METRIC.prefetched] ?? 0) + 1;
      else if (errno === ESRCH) return false;
      else if (errno !== EEXIST && errno !== EAGAIN)
        check("ioctl(UFFDIO_COPY) prefetch", { value: -1, errno });
    }
    return true;
  };
  if (!prefetch(config.prefetch)) return "peer-exited";

  const workingSet = config.workingSet;
  let prefetching = workingSet.length > 0;
  let prefetchEagain = 0;
  const addTo = (slot: number, n: number) => {
    if (n > 0) counters[slot] = (counters[slot] ?? 0) + n;
  };
  /** The prefetch is over, done or given up: faults alone from here. */
  const endPrefetch = (complete: boolean, why?: string) => {
    prefetching = false;
    if (complete) counters[METRIC.prefetchComplete] = 1;
    if (why) post({ type: "warning", message: `working-set prefetch stopped: ${why}` });
  };
  /** What a prefetch slice says: go on, or the peer is gone. */
  const afterSlice = (result: number): boolean => {
    if (faultsUnlisted >= STALE_MIN_FAULTS && faultsUnlisted > STALE_RATIO * faultsListed) {
      counters[METRIC.prefetchStale] = 1;
      endPrefetch(
        false,
        `the guest faulted ${faultsUnlisted} pages its working set does not list (and ${faultsListed} it does): the working set is stale; record it again`,
      );
      return true;
    }
    if (result === 0) endPrefetch(true);
    else if (result === -EAGAIN) {
      counters[METRIC.eagain] = (counters[METRIC.eagain] ?? 0) + 1;
      if (++prefetchEagain > PREFETCH_MAX_EAGAIN) endPrefetch(false, "the guest's memory map kept changing");
    } else if (result === -ESRCH) return false;
    else if (result < 0) endPrefetch(false, `UFFDIO_COPY failed with errno ${-result}`);
    return true;
  };
  // The pure-ffi prefetch's cursor: range index and byte offset inside it.
  let cursorRange = 0;
  let cursorByte = 0;
  /** Pure ffi: one UFFDIO_COPY per page, `maxPages` at most; as sbx_uffd_prefetch returns. */
  const prefetchSliceFfi = (maxPages: number): number => {
    let budget = maxPages;
    while (cursorRange < workingSet.length) {
      const range = workingSet[cursorRange] as { offset: number; length: number };
      const at = range.offset + cursorByte;
      if (at >= range.offset + range.length) {
        cursorRange++;
        cursorByte = 0;
        continue;
      }
      if (budget-- <= 0) return 1;
      const region = regions.find((r) => at >= r.offset && at - r.offset < r.size);
      if (!region) {
        cursorByte = Math.floor(at / PAGE_4K) * PAGE_4K + PAGE_4K - range.offset;
        addTo(METRIC.prefetchSkipped, 1);
        continue;
      }
      const inRegion = at - region.offset;
      const page = region.base + inRegion - (inRegion % region.pageSize);
      const offset = fileOffsetOf(region, page);
      const next = offset + region.pageSize - range.offset;
      // Removed, or its chunk not here yet (it is copied in when it arrives).
      if (removed.has(region, page) || layers.absentChunk(offset)) {
        cursorByte = next;
        addTo(METRIC.prefetchSkipped, 1);
        continue;
      }
      scratch.setU64(COPY, page);
      scratch.setU64(COPY + 8, layers.sourceFor(offset));
      scratch.setU64(COPY + 16, region.pageSize);
      scratch.setU64(COPY + 24, trackDirty ? UFFDIO_COPY_MODE_WP : 0);
      const errno = installPage(UFFDIO_COPY, COPY, COPY + 32);
      if (errno === EAGAIN) return -EAGAIN; // the cursor stays: this page is tried again
      cursorByte = next;
      if (errno === 0) {
        addTo(METRIC.prefetched, 1);
        addTo(METRIC.bytes, region.pageSize);
      } else if (errno === EEXIST) addTo(METRIC.prefetchPresent, 1);
      else return -errno;
    }
    return 0;
  };

  const onRemove = (start: number, end: number) => {
    removed.add(start, end);
    counters[METRIC.removes] = (counters[METRIC.removes] ?? 0) + 1;
  };

  const queued: number[] = [];
  /** Takes one message of the event buffer: REMOVEs and write-protect faults at once, other faults queued. */
  const takeEvent = (at: number) => {
    const event = view.getUint8(at);
    if (event === UFFD_EVENT_PAGEFAULT) {
      const flags = view.getUint32(at + 8, true);
      const address = scratch.u64(at + 16);
      if (flags & UFFD_PAGEFAULT_FLAG_WP) onWriteProtectFault(address);
      else queued.push(flags & UFFD_PAGEFAULT_FLAG_WRITE ? -address : address);
    } else if (event === UFFD_EVENT_REMOVE) onRemove(scratch.u64(at + 8), scratch.u64(at + 16));
  };
  /**
   * Reads what is pending; REMOVEs are applied at once, faults are queued. Unchecked, a failed read
   * counts as empty (EAGAIN is the common case while spinning); the loop checks the read that follows
   * a poll, so a real error still surfaces.
   */
  const drain = (checked = true): number => {
    let length: number;
    if (checked) {
      const result = libc.read(uffd, events, EVENT_SIZE * MAX_EVENTS);
      if (result.value < 0) {
        if (result.errno === EAGAIN || result.errno === EINTR) return 0;
        check("read(userfaultfd)", result);
      }
      length = result.value;
    } else {
      length = libcUnchecked.read(uffd, events, EVENT_SIZE * MAX_EVENTS);
      if (length < 0) return 0;
    }
    const count = Math.floor(length / EVENT_SIZE);
    for (let i = 0; i < count; i++) takeEvent(EVENTS + i * EVENT_SIZE);
    return count;
  };

  /** `queued` holds write faults as negative addresses. */
  const serveFault = (queuedAddress: number) => {
    const write = queuedAddress < 0;
    const address = Math.abs(queuedAddress);
    const region = regionOf(address);
    if (!region)
      throw new UffdError(
        "FAULT_FAILED",
        `fault at 0x${address.toString(16)} is outside every region Firecracker sent`,
        {
          address,
        },
      );
    const page = address - (address % region.pageSize);
    // A page of a lazy layer whose chunk is not here: parked, and the loop goes on with other faults.
    const absent =
      lazy && !removed.has(region, page) ? layers.absentChunk(fileOffsetOf(region, page)) : undefined;
    if (absent) {
      lazy?.defer(absent, queuedAddress);
      addTo(METRIC.faultsDeferred, 1);
      return true;
    }
    const started = performance.now();
    for (let attempt = 0; ; attempt++) {
      const errno = copyOrZero(region, page, write);
      if (errno === 0) {
        recordTrace(fileOffsetOf(region, page));
        break;
      }
      if (errno === EEXIST) {
        counters[METRIC.eexist] = (counters[METRIC.eexist] ?? 0) + 1;
        if (workingSet.length > 0) addTo(METRIC.prefetchHits, 1);
        break;
      }
      if (errno === ESRCH) return false;
      if (errno === EAGAIN && attempt < 10_000) {
        // The peer's memory map is changing (a REMOVE is pending): read those events first, then retry.
        counters[METRIC.eagain] = (counters[METRIC.eagain] ?? 0) + 1;
        drain();
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
    counters[METRIC.faults] = (counters[METRIC.faults] ?? 0) + 1;
    const ns = (performance.now() - started) * 1e6;
    Atomics.add(histogram, Math.min(histogram.length - 1, Math.max(0, Math.ceil(Math.log2(ns + 1)))), 1);
    return true;
  };

  /** Maps the chunks that arrived, serves the faults parked on them and copies in their working set. */
  const takeArrivals = (): boolean => {
    if (!lazy) return true;
    libc.read(lazy.notifyFd, scratch.address + DRAIN, 8); // resets the eventfd; empty is fine
    return lazy.takeArrivals(({ faults, workingSetPages }) => {
      addTo(METRIC.chunksInstalled, 1);
      for (const fault of faults) if (!serveFault(fault)) return false;
      return prefetch(workingSetPages);
    });
  };

  /** What poll says about the peer, the wake fd and arrived chunks: a reason to stop, or undefined to go on. */
  const checkPeer = (timeoutMs: number): StopReason | "uffd" | undefined => {
    const [uffdEvents = 0, connectionEvents = 0, wake, arrived = 0] = pollFor(
      lazy ? [uffd, connection, config.wakeFd, lazy.notifyFd] : [uffd, connection, config.wakeFd],
      timeoutMs,
    );
    if (wake) return "closed";
    if (connectionEvents & (POLLHUP | POLLERR | POLLNVAL)) return "peer-exited";
    if (connectionEvents & POLLIN) {
      const got = libc.read(connection, scratch.address + DRAIN, 4096);
      if (got.value <= 0) return "peer-exited"; // EOF: Firecracker is gone
    }
    if (arrived & POLLIN && !takeArrivals()) return "peer-exited";
    if (uffdEvents & POLLIN) return "uffd";
    if (uffdEvents & (POLLERR | POLLHUP | POLLNVAL)) return "peer-exited";
    return undefined;
  };

  const helper = native?.batchServer(
    regions,
    layers,
    removed,
    recordTrace,
    trackDirty ? dirty : undefined,
    workingSet,
  );
  // The server refills its warm workers on this signal, not during the restore's fault burst, when a
  // worker's start-up (~150 ms of CPU) would compete with the fault loop for the host's cores.
  let servedAny = false;
  let quietAnnounced = false;
  /** Blocks until the peer, the wake fd or a fault needs the loop; announces the first long quiet. */
  const waitIdle = (): StopReason | "uffd" | undefined => {
    if (servedAny && !quietAnnounced) {
      const state = checkPeer(QUIET_MS);
      if (state !== undefined) return state;
      quietAnnounced = true;
      post({ type: "quiet" });
    }
    return checkPeer(-1);
  };
  const takePrefetchStats = (stats: { copied: number; present: number; skipped: number }) => {
    addTo(METRIC.prefetched, stats.copied);
    addTo(METRIC.prefetchPresent, stats.present);
    addTo(METRIC.prefetchSkipped, stats.skipped);
  };
  if (helper) {
    for (;;) {
      const started = performance.now();
      // While prefetching, an empty queue returns at once: the next slice goes in, and faults go first.
      const count = helper.serveBatch(uffd, events, MAX_EVENTS, prefetching ? 0 : SPIN_NS);
      if (count < 0) check("read(userfaultfd)", { value: -1, errno: -count });
      const stats = helper.takeStats();
      if (stats.removes > 0) counters[METRIC.removes] = (counters[METRIC.removes] ?? 0) + stats.removes;
      if (stats.writeProtect > 0)
        counters[METRIC.writeProtectFaults] = (counters[METRIC.writeProtectFaults] ?? 0) + stats.writeProtect;
      if (stats.copied + stats.present > 0) {
        counters[METRIC.faults] = (counters[METRIC.faults] ?? 0) + stats.copied + stats.present;
        counters[METRIC.pagesCopied] = (counters[METRIC.pagesCopied] ?? 0) + stats.copied;
        counters[METRIC.eexist] = (counters[METRIC.eexist] ?? 0) + stats.present;
        if (workingSet.length > 0) addTo(METRIC.prefetchHits, stats.present);
        counters[METRIC.bytes] = (counters[METRIC.bytes] ?? 0) + stats.bytes;
        const served = stats.copied + stats.present;
        const ns = ((performance.now() - started) * 1e6) / served;
        Atomics.add(
          histogram,
          Math.min(histogram.length - 1, Math.max(0, Math.ceil(Math.log2(ns + 1)))),
          served,
        );
      }
      if (count === 0) {
        // Quiet for a while, or a budget of faults served: look at the peer and the wake fd.
        const busy = stats.copied + stats.present + stats.writeProtect > 0;
        if (busy) servedAny = true;
        if (prefetching) {
          const result = helper.prefetchSlice(uffd, PREFETCH_SLICE_PAGES);
          takePrefetchStats(helper.takePrefetchStats());
          if (!afterSlice(result)) return "peer-exited";
          const state = checkPeer(0);
          if (state === "closed" || state === "peer-exited") return state;
          continue;
        }
        const state = busy ? checkPeer(0) : waitIdle();
        if (state === "closed" || state === "peer-exited") return state;
        continue;
      }
      for (let i = 0; i < count; i++) {
        const status = helper.status(i);
        // Served or applied, and counted in the stats.
        if (status === 0 || status === 1 || status === 3 || status === 4) continue;
        if (status === -ESRCH) return "peer-exited"; // only a fault's ioctl reports it: the peer's mm is gone
        // Removed pages, EAGAIN and the unexpected go through the JS path, which knows what to do; the
        // helper applied the batch's REMOVEs before any of its faults, as the pure-ffi loop does.
        takeEvent(EVENTS + i * EVENT_SIZE);
      }
      while (queued.length > 0) if (!serveFault(queued.shift() as number)) return "peer-exited";
    }
  }

  // Pure ffi: while faults keep coming, read the non-blocking userfaultfd directly (no poll per fault);
  // after SPIN_READS empty reads, block in poll(). The peer and the wake fd are checked at least every
  // 64 busy rounds.
  let idle = 0;
  let busy = 0;
  let checkNextRead = true;
  for (;;) {
    const drained = drain(checkNextRead);
    checkNextRead = false;
    if (drained > 0) {
      idle = 0;
      servedAny = true;
      while (queued.length > 0) if (!serveFault(queued.shift() as number)) return "peer-exited";
      if (++busy % 64 === 0) {
        const state = checkPeer(0);
        if (state === "closed" || state === "peer-exited") return state;
      }
      continue;
    }
    if (prefetching) {
      if (!afterSlice(prefetchSliceFfi(PREFETCH_SLICE_PAGES_FFI))) return "peer-exited";
      if (++busy % 64 === 0) {
        const state = checkPeer(0);
        if (state === "closed" || state === "peer-exited") return state;
      }
      checkNextRead = true;
      continue;
    }
    if (++idle < SPIN_READS) continue;
    idle = 0;
    const state = waitIdle();
    if (state === "closed" || state === "peer-exited") return state;
    checkNextRead = true;
  }
}

/**
 * Starts reading the working set's pages of the memory file into the page cache while Firecracker
 * starts and loads (this runs before the accept): on a cold cache (a fresh host, a download) the
 * prefetch then copies from memory instead of waiting on the disk page by page. A hint: errors are
 * ignored, and a range is read ahead in the layer that has its first page.
 */
function readAheadWorkingSet(ranges: readonly { offset: number; length: number }[], layers: Layers) {
  for (const { offset, length } of ranges.slice(0, READAHEAD_MAX_RANGES)) {
    const start = Math.floor(offset / PAGE_4K) * PAGE_4K;
    const end = Math.min(layers.size, Math.ceil((offset + length) / PAGE_4K) * PAGE_4K);
    // A lazy layer's absent page has no mapping to read ahead: its chunk is on its way.
    if (start < end && !layers.absentChunk(start))
      libc.madvise(layers.sourceFor(start), end - start, MADV_WILLNEED);
  }
}

/**
 * One byte per memory-file page the working set lists; undefined when marking them would cost more
 * than a few milliseconds (overlapping hostile ranges): the stale check is then off.
 */
function listedPages(ranges: readonly { offset: number; length: number }[], size: number) {
  if (ranges.length === 0) return undefined;
  const pages = Math.ceil(size / PAGE_4K);
  const listed = new Uint8Array(pages);
  let work = 0;
  for (const { offset, length } of ranges) {
    const first = Math.floor(offset / PAGE_4K);
    const end = Math.min(pages, Math.ceil((offset + length) / PAGE_4K));
    if (first >= end) continue;
    work += end - first;
    if (work > Math.max(4 * pages, 1 << 22)) return undefined;
    listed.fill(1, first, end);
  }
  return listed;
}

function run(): void {
  let stop: StopReason;
  let peer: number | undefined;
  try {
    const native = config.nativeHelper ? openNativeHelper(config.nativeHelper, cleanups) : undefined;
    // Before accepting: scanning a diff's extents and mapping the layers would otherwise delay the
    // guest's first page, and the layer stack is known from the start.
    const layers = mapLayers(config.layers, cleanups, native?.listExtents);
    // Asked for before Firecracker even connects: the store's round trips overlap its start.
    const lazy = config.lazy
      ? new LazyChunks(config.lazy, layers, (chunk, urgent) => post({ type: "fetch", ...chunk, urgent }))
      : undefined;
    lazy?.requestWorkingSet(config.workingSet);
    readAheadWorkingSet(config.workingSet, layers);
    const accepted = acceptPeer();
    if (typeof accepted !== "number") {
      post({ type: "stopped", reason: accepted });
      return;
    }
    const connection = accepted;
    peer = peerPid(connection);
    // Handed to the main thread at once: if this worker dies unreported, it kills the peer with it.
    const peerPidfd = libc.syscall3(SYS_PIDFD_OPEN, peer, 0, 0).value;
    post({ type: "accepted", connectionFd: connection, peerPid: peer, peerPidfd });
    if (config.expectedPeerPid !== undefined && peer !== config.expectedPeerPid)
      throw new UffdError(
        "PEER_MISMATCH",
        `process ${peer} connected; expected Firecracker's pid ${config.expectedPeerPid}`,
      );
    const [data, wake] = pollFor([connection, config.wakeFd], config.handshakeTimeoutMs);
    if (wake) {
      post({ type: "stopped", reason: "closed", peerPid: peer });
      return;
    }
    if (!data)
      throw new UffdError(
        "HANDSHAKE_TIMEOUT",
        `process ${peer} connected but sent no mappings within ${config.handshakeTimeoutMs} ms`,
      );
    const message = recvWithFds(connection, { maxFds: 4 });
    for (const fd of message.fds) owned.add(fd);
    if (message.data.length === 0 && message.fds.length === 0)
      throw new UffdError("PEER_CLOSED", `process ${peer} closed the connection before sending its mappings`);
    const handshake = parseHandshake(message.data, message.fds, layers.size);
    const trackDirty = config.trackDirty && enableDirtyTracking(handshake);
    // The caller may take the memfd (to export memory after Firecracker exits): hand over a duplicate,
    // so the worker's own copy is closed with everything else it owns.
    const memfdFd =
      handshake.memfdFd === undefined
        ? undefined
        : check("fcntl(F_DUPFD_CLOEXEC)", libc.fcntl(handshake.memfdFd, F_DUPFD_CLOEXEC, 0));
    post({
      type: "ready",
      peerPid: peer,
      regions: handshake.regions,
      memfdFd,
      receivedFds: message.fds,
      trackDirty,
    });
    stop = serve(handshake.uffdFd, connection, handshake.regions, layers, trackDirty, native, lazy);
  } catch (error) {
    const e =
      error instanceof UffdError ? error : new UffdError("SYSCALL_FAILED", String(error), { cause: error });
    release();
    post({
      type: "stopped",
      reason: "error",
      peerPid: peer,
      error: { code: e.code, message: e.message, errno: e.errno, syscall: e.syscall, address: e.address },
    });
    return;
  }
  release();
  post({ type: "stopped", reason: stop, peerPid: peer });
}

/**
 * Registers the regions for write-protect faults too, through the received fd (UFFDIO_REGISTER acts on
 * the mm of the process that created the userfaultfd). False, with one warning, where it cannot work:
 * the caller then falls back to Firecracker's own Diff snapshot.
 */
function enableDirtyTracking(handshake: Handshake): boolean {
  const backing =
    handshake.memfdFd !== undefined
      ? "shmem"
      : handshake.regions.some((r) => r.pageSize === PAGE_2M)
        ? "hugetlb"
        : "anonymous";
  const warn = (why: string) => {
    post({
      type: "warning",
      message: `dirty tracking disabled: ${why}; use Firecracker's Diff snapshot instead`,
    });
    return false;
  };
  if (!config.writeProtect[backing])
    return warn(`this arch and kernel cannot write-protect ${backing} memory`);
  const features = negotiatedFeatures(handshake.uffdFd);
  if (backing !== "anonymous" && !(features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM))
    return warn(`the peer did not negotiate UFFD_FEATURE_WP_HUGETLBFS_SHMEM for ${backing} memory`);
  for (const region of handshake.regions) {
    scratch.setU64(REGISTER, region.base);
    scratch.setU64(REGISTER + 8, region.size);
    scratch.setU64(REGISTER + 16, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP);
    scratch.setU64(REGISTER + 24, 0);
    const result = libc.ioctl(handshake.uffdFd, UFFDIO_REGISTER, scratch.address + REGISTER);
    if (result.value !== 0) return warn(`UFFDIO_REGISTER with MODE_WP failed (errno ${result.errno})`);
  }
  return true;
}

/** The features Firecracker negotiated, from the fd's fdinfo `API:\t<api>:<features>:<ioctls>` line. */
function negotiatedFeatures(uffd: number): number {
  const api = /^API:\s*([0-9a-f]+):([0-9a-f]+):/m.exec(readFileSync(`/proc/self/fdinfo/${uffd}`, "utf8"));
  return api ? Number.parseInt(api[2] as string, 16) : 0;
}

function release(): void {
  for (const fd of owned) libc.close(fd);
  owned.clear();
  for (const cleanup of cleanups.splice(0)) cleanup();
}

function start(received: WorkerConfig): void {
  config = received;
  counters = new Float64Array(config.metrics.counters);
  histogram = new Int32Array(config.metrics.histogram);
  dirty = new Uint8Array(config.metrics.dirty);
  trace = new Float64Array(config.metrics.trace);
  traceCount = new Int32Array(config.metrics.traceCount);
  try {
    run();
  } finally {
    release();
    scratch.free();
  }
}

const initial = workerData as WorkerConfig | undefined;
if (initial) start(initial);
else port.once("message", start);
