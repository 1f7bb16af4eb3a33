// The page-fault server's worker thread: accept one connection, validate Firecracker's handshake, then
// serve faults until woken, until the peer hangs up, or until a fault cannot be served. Blocking in
// poll() here never blocks the caller's event loop. The worker owns every fd it accepts or receives
// and closes them all before it reports that it stopped, so the main thread never races it on an fd.
import { readFileSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import { check, UffdError } from "./errors.ts";
import { runFfiLoop } from "./fault-loop-ffi.ts";
import { runNativeLoop } from "./fault-loop-native.ts";
import { FaultMetrics } from "./fault-metrics.ts";
import { FaultServing } from "./fault-serving.ts";
import { type GuestRegion, type Handshake, parseHandshake } from "./handshake.ts";
import { MAX_EVENTS, type NativeHelperBinding, openNativeHelper } from "./helper-binding.ts";
import { type Layers, mapLayers } from "./layers.ts";
import { LazyChunks } from "./lazy-chunks.ts";
import { libc } from "./libc.ts";
import {
  F_DUPFD_CLOEXEC,
  MADV_WILLNEED,
  PAGE_2M,
  PAGE_4K,
  SO_PEERCRED,
  SOCK_CLOEXEC,
  SOL_SOCKET,
  SYS_PIDFD_OPEN,
  UCRED,
  UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
  UFFDIO_REGISTER_MODE_MISSING,
  UFFDIO_REGISTER_MODE_WP,
} from "./linux.ts";
import { NativeMemory } from "./native-memory.ts";
import { Poller } from "./poller.ts";
import { recvWithFds } from "./scm-rights.ts";
import { Userfaultfd } from "./userfaultfd.ts";
import type { StopReason, WorkerConfig, WorkerMessage } from "./worker-protocol.ts";

const port = parentPort as NonNullable<typeof parentPort>;
// Set by start(): from workerData, or, for a worker started ahead of time (a warm pool), from its first
// message. Loading this module takes ~150 ms, which would otherwise sit between Firecracker's connect
// and its first fault.
let config: WorkerConfig;

const post = (message: WorkerMessage) => port.postMessage(message);
const owned = new Set<number>();
const poller = new Poller();
const cleanups: (() => void)[] = [];

// Ranges read ahead before the accept (one madvise each): a recorded set has a handful.
const READAHEAD_MAX_RANGES = 4096;

function acceptPeer(): number | StopReason {
  const [listening, wake] = poller.poll([config.listenFd, config.wakeFd], config.acceptTimeoutMs);
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

/** The connected process's pid and uid (SO_PEERCRED: what the kernel recorded at connect). */
function peerCredentials(connection: number): { pid: number; uid: number } {
  const ucred = new NativeMemory(UCRED.size + 4);
  try {
    ucred.view.setInt32(UCRED.size, UCRED.size, true); // the socklen_t after the struct
    check(
      "getsockopt(SO_PEERCRED)",
      libc.getsockopt(connection, SOL_SOCKET, SO_PEERCRED, ucred.address, ucred.address + UCRED.size),
    );
    return { pid: ucred.view.getInt32(UCRED.pid, true), uid: ucred.view.getUint32(UCRED.uid, true) };
  } finally {
    ucred.free();
  }
}

/** Serves faults until woken or until the peer goes away, on the native helper when there is one. */
function serve(
  uffd: Userfaultfd,
  connection: number,
  handshake: { regions: GuestRegion[]; trackDirty: boolean },
  layers: Layers,
  native: NativeHelperBinding | undefined,
  lazy: LazyChunks | undefined,
): StopReason {
  const { regions, trackDirty } = handshake;
  const dirty = new Uint8Array(config.metrics.dirty);
  const serving = new FaultServing({
    uffd,
    connection,
    wakeFd: config.wakeFd,
    regions,
    layers,
    trackDirty,
    dirty,
    trace: new Float64Array(config.metrics.trace),
    traceCount: new Int32Array(config.metrics.traceCount),
    workingSet: config.workingSet,
    listed: listedPages(config.workingSet, layers.size),
    lazy,
    metrics: new FaultMetrics(
      new Float64Array(config.metrics.counters),
      new Int32Array(config.metrics.histogram),
    ),
    poller,
    post,
    cleanups,
  });
  if (!serving.prefetchOffsets(config.prefetch)) return "peer-exited";
  const helper = native?.batchServer(
    regions,
    layers,
    serving.removed,
    (offset) => serving.recordTrace(offset),
    trackDirty ? dirty : undefined,
    config.workingSet,
  );
  return helper ? runNativeLoop(serving, helper) : runFfiLoop(serving);
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
    const credentials = peerCredentials(connection);
    peer = credentials.pid;
    // Handed to the main thread at once: if this worker dies unreported, it kills the peer with it.
    const peerPidfd = libc.syscall3(SYS_PIDFD_OPEN, peer, 0, 0).value;
    post({ type: "accepted", connectionFd: connection, peerPid: peer, peerPidfd });
    if (config.expectedPeerPid !== undefined && peer !== config.expectedPeerPid)
      throw new UffdError(
        "PEER_MISMATCH",
        `process ${peer} connected; expected Firecracker's pid ${config.expectedPeerPid}`,
      );
    if (config.expectedPeerUid !== undefined && credentials.uid !== config.expectedPeerUid)
      throw new UffdError(
        "PEER_MISMATCH",
        `process ${peer} connected as uid ${credentials.uid}; expected Firecracker's uid ${config.expectedPeerUid}`,
      );
    const [data, wake] = poller.poll([connection, config.wakeFd], config.handshakeTimeoutMs);
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
    const uffd = new Userfaultfd(handshake.uffdFd, MAX_EVENTS);
    cleanups.push(() => uffd.free());
    const trackDirty = config.trackDirty && enableDirtyTracking(handshake, uffd);
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
    stop = serve(uffd, connection, { regions: handshake.regions, trackDirty }, layers, native, lazy);
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
function enableDirtyTracking(handshake: Handshake, uffd: Userfaultfd): boolean {
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
    const errno = uffd.register(
      region.base,
      region.size,
      UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
    );
    if (errno !== 0) return warn(`UFFDIO_REGISTER with MODE_WP failed (errno ${errno})`);
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
  try {
    run();
  } finally {
    release();
    poller.free();
  }
}

const initial = workerData as WorkerConfig | undefined;
if (initial) start(initial);
else port.once("message", start);
