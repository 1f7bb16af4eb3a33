// The page-fault server's worker thread: accept one connection, validate Firecracker's handshake, then
// serve faults until woken, until the peer hangs up, or until a fault cannot be served. Blocking in
// poll() here never blocks the caller's event loop. The worker owns every fd it accepts or receives
// and closes them all before it reports that it stopped, so the main thread never races it on an fd.
import { closeSync, fstatSync, openSync, readFileSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import { DataType, load, open } from "ffi-rs";
import { check, UffdError } from "./errors.ts";
import { type GuestRegion, type Handshake, parseHandshake } from "./handshake.ts";
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
import {
  EAGAIN,
  EEXIST,
  EINTR,
  ENOENT,
  ENXIO,
  ESRCH,
  F_DUPFD_CLOEXEC,
  libc,
  libcUnchecked,
  MAP_PRIVATE,
  POLLERR,
  POLLHUP,
  POLLIN,
  POLLNVAL,
  PROT_READ,
  SEEK_DATA,
  SEEK_HOLE,
  SO_PEERCRED,
  SOCK_CLOEXEC,
  SOL_SOCKET,
} from "./libc.ts";
import { NATIVE_HELPER_ABI } from "./native-helper.ts";
import { NativeMemory } from "./native-memory.ts";
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
const MAX_EVENTS = 64;

type StopReason = "closed" | "peer-exited";

// How long the native helper spins on an empty userfaultfd before the loop falls back to poll(): a
// fault arriving within it costs no poll and no wake-up (the C baseline spins the same way).
const SPIN_NS = 200_000;
const REMOVED_CAPACITY = 8192;
// Empty non-blocking reads the pure-ffi loop tries (~3 µs each) before it blocks in poll().
const SPIN_READS = 16;
// The helper returns after this many faults so the loop notices close() and a hung-up peer promptly.
const MAX_FAULTS_PER_CALL = 4096;
// No faults for this long after some were served: the restore's burst is over (gaps inside a burst,
// while Firecracker finishes loading or the vCPU is descheduled, last a few milliseconds at most).
const QUIET_MS = 100;

interface NativeHelper {
  serveBatch(uffd: number, events: number, maxEvents: number, spinNs: number): number;
  status(index: number): number;
  /** Faults the helper served since the last call, then zeroes them. */
  takeStats(): { copied: number; present: number; bytes: number };
  addRemoved(start: number, end: number): void;
}

/** Loads native/uffd-batch.c's shared library and lays out its regions, removed ranges and statuses. */
function loadNativeHelper(
  path: string,
  regions: GuestRegion[],
  memoryAddress: number,
  recordTrace: (offset: number) => void,
): NativeHelper {
  const library = "sbx-uffd-batch";
  open({ library, path });
  const abi = load({
    library,
    funcName: "sbx_uffd_abi_version",
    retType: DataType.I32,
    paramsType: [],
    paramsValue: [],
  });
  if (abi !== NATIVE_HELPER_ABI)
    throw new UffdError(
      "INVALID_OPTIONS",
      `native helper ${path} has ABI ${abi}, this version needs ${NATIVE_HELPER_ABI}: rebuild it`,
    );
  const memory = new NativeMemory(
    regions.length * 40 + REMOVED_CAPACITY * 16 + MAX_EVENTS * 8 + 32 + MAX_FAULTS_PER_CALL * 8,
  );
  cleanups.push(() => memory.free());
  const regionsAt = 0;
  const removedAt = regions.length * 40;
  const statusAt = removedAt + REMOVED_CAPACITY * 16;
  const statsAt = statusAt + MAX_EVENTS * 8;
  const traceAt = statsAt + 32;
  regions.forEach((region, i) => {
    memory.setU64(regionsAt + i * 40, region.base);
    memory.setU64(regionsAt + i * 40 + 8, region.size);
    memory.setU64(regionsAt + i * 40 + 16, memoryAddress + region.offset);
    memory.setU64(regionsAt + i * 40 + 24, region.pageSize);
    memory.setU64(regionsAt + i * 40 + 32, region.offset);
  });
  let removedCount = 0;
  const params = {
    library,
    funcName: "sbx_uffd_serve_batch",
    retType: DataType.I64,
    // (uffd, msgs, max_msgs, regions, nregions, removed, nremoved, status, spin_ns, stats, max_faults,
    //  trace, trace_cap)
    paramsType: [DataType.I32, ...new Array<DataType>(12).fill(DataType.I64)],
    paramsValue: [
      0,
      0,
      0,
      memory.address + regionsAt,
      regions.length,
      memory.address + removedAt,
      0,
      memory.address + statusAt,
      0,
      memory.address + statsAt,
      MAX_FAULTS_PER_CALL,
      memory.address + traceAt,
      MAX_FAULTS_PER_CALL,
    ],
  };
  return {
    serveBatch(uffd, events, maxEvents, spinNs) {
      params.paramsValue[0] = uffd;
      params.paramsValue[1] = events;
      params.paramsValue[2] = maxEvents;
      params.paramsValue[6] = removedCount;
      params.paramsValue[8] = spinNs;
      return load(params as never) as unknown as number;
    },
    status(index) {
      return Number(memory.view.getBigInt64(statusAt + index * 8, true));
    },
    takeStats() {
      const stats = {
        copied: memory.u64(statsAt),
        present: memory.u64(statsAt + 8),
        bytes: memory.u64(statsAt + 16),
      };
      const traced = memory.u64(statsAt + 24);
      for (let i = 0; i < traced; i++) recordTrace(memory.u64(traceAt + i * 8));
      memory.bytes.fill(0, statsAt, statsAt + 32);
      return stats;
    },
    addRemoved(start, end) {
      // Past capacity the helper sees no more ranges, so it must stop copying: widen the last entry to
      // cover everything, and every fault goes to the JS path, which keeps the full list.
      if (removedCount < REMOVED_CAPACITY) {
        memory.setU64(removedAt + removedCount * 16, start);
        memory.setU64(removedAt + removedCount * 16 + 8, end);
        removedCount++;
      } else {
        memory.setU64(removedAt + (REMOVED_CAPACITY - 1) * 16, 0);
        memory.setU64(removedAt + (REMOVED_CAPACITY - 1) * 16 + 8, Number.MAX_SAFE_INTEGER);
      }
    },
  };
}

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

interface Layers {
  /** The base layer's size: every region must lie inside it. */
  size: number;
  count: number;
  /** Where the bytes of memory-file offset `offset` are mapped, from the newest layer that has them. */
  sourceFor(offset: number): number;
}

/**
 * Maps the layer stack: the base (a full memory file), then diffs, newest last. A diff has a page when
 * its ranges (or, without them, its data extents: SEEK_DATA/SEEK_HOLE) cover it; a hole inherits from
 * the layer below, never zero.
 */
function mapLayers(): Layers {
  const addresses: number[] = [];
  let table: Uint8Array | undefined;
  let baseSize = 0;
  config.layers.forEach((layer, index) => {
    let fd: number;
    try {
      fd = openSync(layer.path, "r");
    } catch (cause) {
      throw new UffdError("MEMORY_FILE_INVALID", `cannot open memory layer ${layer.path}`, { cause });
    }
    try {
      const size = fstatSync(fd).size;
      if (size === 0) throw new UffdError("MEMORY_FILE_INVALID", `memory layer ${layer.path} is empty`);
      const address = check(`mmap(${layer.path})`, libc.mmap(0, size, PROT_READ, MAP_PRIVATE, fd, 0));
      cleanups.push(() => libc.munmap(address, size));
      addresses.push(address);
      if (index === 0) {
        baseSize = size;
        return;
      }
      if (index > 255) throw new UffdError("INVALID_OPTIONS", "at most 256 memory layers");
      table ??= new Uint8Array(Math.ceil(baseSize / PAGE_4K));
      const ranges = layer.ranges ?? dataExtents(fd, size);
      for (const range of ranges) {
        if (range.offset % PAGE_4K || range.length % PAGE_4K || range.offset + range.length > size)
          throw new UffdError(
            "MEMORY_FILE_INVALID",
            `layer ${layer.path}: range ${range.offset}+${range.length} is unaligned or past its ${size} bytes`,
          );
        table.fill(
          index,
          range.offset / PAGE_4K,
          Math.min(table.length, (range.offset + range.length) / PAGE_4K),
        );
      }
    } finally {
      closeSync(fd); // the mapping keeps the file alive
    }
  });
  const base = addresses[0] as number;
  return {
    size: baseSize,
    count: addresses.length,
    sourceFor: table
      ? (offset) => (addresses[table![Math.floor(offset / PAGE_4K)] ?? 0] as number) + offset
      : (offset) => base + offset,
  };
}

/** The data extents of a sparse file, page-aligned (what a Diff snapshot wrote). */
function dataExtents(fd: number, size: number): { offset: number; length: number }[] {
  const extents: { offset: number; length: number }[] = [];
  let position = 0;
  while (position < size) {
    const data = libc.lseek(fd, position, SEEK_DATA);
    if (data.value < 0) {
      if (data.errno === ENXIO) break; // no more data
      check("lseek(SEEK_DATA)", data);
    }
    const hole = check("lseek(SEEK_HOLE)", libc.lseek(fd, data.value, SEEK_HOLE));
    const start = data.value - (data.value % PAGE_4K);
    const end = Math.min(size, Math.ceil(hole / PAGE_4K) * PAGE_4K);
    extents.push({ offset: start, length: end - start });
    position = hole;
  }
  return extents;
}

/** Serves faults until woken or until the peer goes away. */
function serve(
  uffd: number,
  connection: number,
  regions: GuestRegion[],
  layers: Layers,
  trackDirty: boolean,
): StopReason {
  const removed: [number, number][] = [];
  let onRemoveHook: ((start: number, end: number) => void) | undefined;
  let zeroHuge = 0;
  let zeroSmall = 0;
  const view = scratch.view;
  const events = scratch.address + EVENTS;

  const isRemoved = (page: number) => {
    for (const [start, end] of removed) if (page >= start && page < end) return true;
    return false;
  };
  const regionOf = (address: number) => {
    for (const region of regions)
      if (address >= region.base && address < region.base + region.size) return region;
    return undefined;
  };
  const readU64 = (at: number) => view.getUint32(at, true) + view.getUint32(at + 4, true) * 0x1_0000_0000;

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
    const zero = isRemoved(page);
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

  const recordTrace = (offset: number) => {
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
      if (!region) continue;
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

  const onRemove = (start: number, end: number) => {
    removed.push([start, end]);
    onRemoveHook?.(start, end);
    counters[METRIC.removes] = (counters[METRIC.removes] ?? 0) + 1;
  };

  const queued: number[] = [];
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
    for (let i = 0; i < count; i++) {
      const at = EVENTS + i * EVENT_SIZE;
      const event = view.getUint8(at);
      if (event === UFFD_EVENT_PAGEFAULT) {
        const flags = view.getUint32(at + 8, true);
        if (flags & UFFD_PAGEFAULT_FLAG_WP) onWriteProtectFault(readU64(at + 16));
        else queued.push(flags & UFFD_PAGEFAULT_FLAG_WRITE ? -readU64(at + 16) : readU64(at + 16));
      } else if (event === UFFD_EVENT_REMOVE) onRemove(readU64(at + 8), readU64(at + 16));
    }
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
    const started = performance.now();
    for (let attempt = 0; ; attempt++) {
      const errno = copyOrZero(region, page, write);
      if (errno === 0) {
        recordTrace(fileOffsetOf(region, page));
        break;
      }
      if (errno === EEXIST) {
        counters[METRIC.eexist] = (counters[METRIC.eexist] ?? 0) + 1;
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

  /** What poll says about the peer and the wake fd: a reason to stop, or undefined to go on. */
  const checkPeer = (timeoutMs: number): StopReason | "uffd" | undefined => {
    const [uffdEvents = 0, connectionEvents = 0, wake] = pollFor(
      [uffd, connection, config.wakeFd],
      timeoutMs,
    );
    if (wake) return "closed";
    if (connectionEvents & (POLLHUP | POLLERR | POLLNVAL)) return "peer-exited";
    if (connectionEvents & POLLIN) {
      const got = libc.read(connection, scratch.address + DRAIN, 4096);
      if (got.value <= 0) return "peer-exited"; // EOF: Firecracker is gone
    }
    if (uffdEvents & POLLIN) return "uffd";
    if (uffdEvents & (POLLERR | POLLHUP | POLLNVAL)) return "peer-exited";
    return undefined;
  };

  const helper =
    config.nativeHelper && layers.count === 1 && !trackDirty
      ? loadNativeHelper(config.nativeHelper, regions, layers.sourceFor(0), recordTrace)
      : undefined;
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
  if (helper) {
    onRemoveHook = (start, end) => helper.addRemoved(start, end);
    for (;;) {
      const started = performance.now();
      const count = helper.serveBatch(uffd, events, MAX_EVENTS, SPIN_NS);
      if (count < 0) check("read(userfaultfd)", { value: -1, errno: -count });
      const stats = helper.takeStats();
      if (stats.copied + stats.present > 0) {
        counters[METRIC.faults] = (counters[METRIC.faults] ?? 0) + stats.copied + stats.present;
        counters[METRIC.pagesCopied] = (counters[METRIC.pagesCopied] ?? 0) + stats.copied;
        counters[METRIC.eexist] = (counters[METRIC.eexist] ?? 0) + stats.present;
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
        const busy = stats.copied + stats.present > 0;
        if (busy) servedAny = true;
        const state = busy ? checkPeer(0) : waitIdle();
        if (state === "closed" || state === "peer-exited") return state;
        continue;
      }
      for (let i = 0; i < count; i++) {
        const status = helper.status(i);
        if (status === 0 || status === 1) continue; // served, and counted in the stats
        const at = EVENTS + i * EVENT_SIZE;
        const event = view.getUint8(at);
        if (event === UFFD_EVENT_REMOVE) onRemove(readU64(at + 8), readU64(at + 16));
        else if (event === UFFD_EVENT_PAGEFAULT) {
          if (status === -ESRCH) return "peer-exited";
          // Removed ranges, EAGAIN and the unexpected go through the JS path, which knows what to do.
          if (!serveFault(readU64(at + 16))) return "peer-exited";
        }
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
    if (++idle < SPIN_READS) continue;
    idle = 0;
    const state = waitIdle();
    if (state === "closed" || state === "peer-exited") return state;
    checkNextRead = true;
  }
}

function run(): void {
  let stop: StopReason;
  let peer: number | undefined;
  try {
    const accepted = acceptPeer();
    if (typeof accepted !== "number") {
      post({ type: "stopped", reason: accepted });
      return;
    }
    const connection = accepted;
    post({ type: "accepted" });
    peer = peerPid(connection);
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
    const layers = mapLayers();
    const handshake = parseHandshake(message.data, message.fds, layers.size);
    const trackDirty = config.trackDirty && enableDirtyTracking(handshake);
    // The caller may take the memfd (to export memory after Firecracker exits): hand over a duplicate,
    // so the worker's own copy is closed with everything else it owns.
    const memfdFd =
      handshake.memfdFd === undefined
        ? undefined
        : check("fcntl(F_DUPFD_CLOEXEC)", libc.fcntl(handshake.memfdFd, F_DUPFD_CLOEXEC, 0));
    post({ type: "ready", peerPid: peer, regions: handshake.regions, memfdFd, trackDirty });
    stop = serve(handshake.uffdFd, connection, handshake.regions, layers, trackDirty);
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
