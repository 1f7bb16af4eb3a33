import type { MessagePort } from "node:worker_threads";
import type { UffdErrorCode } from "./errors.ts";
import type { GuestRegion } from "./handshake.ts";

/** A lazy layer's chunk, now in the host's chunk cache at `path` (undefined: all zeros). */
export interface ChunkArrival {
  layer: number;
  index: number;
  path: string | undefined;
}

/** What the server hands its worker thread. fd numbers are process-wide, so they pass as numbers. */
export interface WorkerConfig {
  socketPath: string;
  listenFd: number;
  wakeFd: number;
  /**
   * The memory layers, base first; a diff layer's `ranges` say which pages it has (else its data
   * extents). A `lazy` layer has no file: its chunks arrive through `lazy` below.
   */
  layers: {
    path?: string | undefined;
    lazy?: { size: number; chunkSize: number } | undefined;
    ranges?: { offset: number; length: number }[] | undefined;
  }[];
  /**
   * With lazy layers: the port chunks arrive on ({ layer, index, path? }, see ChunkArrival) and an
   * eventfd the main thread bumps after each post, which the fault loop polls with its other fds.
   */
  lazy?: { port: MessagePort; notifyFd: number } | undefined;
  /** Memory-file offsets to copy in before the first fault. */
  prefetch: number[];
  /** Memory-file ranges to copy in after the handshake, between faults (which go first). */
  workingSet: { offset: number; length: number }[];
  trackDirty: boolean;
  /** What @sbx/arch says this arch and kernel can write-protect, per kind of guest memory. */
  writeProtect: { anonymous: boolean; shmem: boolean; hugetlb: boolean };
  acceptTimeoutMs: number;
  handshakeTimeoutMs: number;
  expectedPeerPid: number | undefined;
  /** The uid the peer must run as (a jailed Firecracker's), or undefined for any. */
  expectedPeerUid: number | undefined;
  /** The native batch helper's path, or undefined for the pure-ffi path. */
  nativeHelper: string | undefined;
  metrics: {
    counters: SharedArrayBuffer;
    histogram: SharedArrayBuffer;
    /** One byte per 4 KiB of the memory file: 1 when written since the restore. */
    dirty: SharedArrayBuffer;
    /** Memory-file offsets of served missing-page faults, in order, and how many there are. */
    trace: SharedArrayBuffer;
    traceCount: SharedArrayBuffer;
  };
}

/** Why a fault loop ended: close(), Firecracker left, or an error. */
export type StopReason = "closed" | "peer-exited" | "error";

export type WorkerMessage =
  /**
   * The worker accepted a connection: its fd (the worker's), the peer's pid, and a pidfd of the peer
   * (the main thread's from now on; -1 when pidfd_open failed), for the case the worker dies unreported.
   */
  | { type: "accepted"; connectionFd: number; peerPid: number; peerPidfd: number }
  | {
      type: "ready";
      peerPid: number;
      regions: GuestRegion[];
      memfdFd: number | undefined;
      /** The fds the peer sent (the worker's; the userfaultfd first). */
      receivedFds: number[];
      trackDirty: boolean;
    }
  | { type: "warning"; message: string }
  /** A lazy layer's chunk is needed: `urgent` when a fault waits for it, else for the working set. */
  | { type: "fetch"; layer: number; index: number; urgent: boolean }
  /** The first quiet moment after faults were served: the restore's burst is over. */
  | { type: "quiet" }
  | {
      type: "stopped";
      reason: StopReason;
      peerPid?: number | undefined;
      error?: {
        code: UffdErrorCode;
        message: string;
        errno: number | undefined;
        syscall: string | undefined;
        address: number | undefined;
      };
    };

/** Slots of the shared counters array (Float64: written by the worker only, read by metrics()). */
export const METRIC = {
  faults: 0,
  pagesCopied: 1,
  zeroPages: 2,
  removes: 3,
  bytes: 4,
  eagain: 5,
  eexist: 6,
  prefetched: 7,
  writeProtectFaults: 8,
  /** Faults that found their page present while a working set was given: the prefetch got there first. */
  prefetchHits: 9,
  /** Working-set pages found present already, or skipped (outside every region, or removed). */
  prefetchPresent: 10,
  prefetchSkipped: 11,
  /** 1 once the whole working set was gone through. */
  prefetchComplete: 12,
  /** 1 when the working set was given up as stale (the guest faulted pages it does not list). */
  prefetchStale: 13,
  /** Faults that waited for their lazy layer's chunk to arrive. */
  faultsDeferred: 14,
  /** Lazy layers' chunks mapped in. */
  chunksInstalled: 15,
} as const;
export const METRIC_SLOTS = 16;
/** Latency histogram: bucket i counts faults served in (2^(i-1), 2^i] ns. */
export const HISTOGRAM_BUCKETS = 40;
