import type { UffdErrorCode } from "./errors.ts";
import type { GuestRegion } from "./handshake.ts";

/** What the server hands its worker thread. fd numbers are process-wide, so they pass as numbers. */
export interface WorkerConfig {
  socketPath: string;
  listenFd: number;
  wakeFd: number;
  memoryFile: string;
  acceptTimeoutMs: number;
  handshakeTimeoutMs: number;
  expectedPeerPid: number | undefined;
  /** The native batch helper's path, or undefined for the pure-ffi path. */
  nativeHelper: string | undefined;
  metrics: { counters: SharedArrayBuffer; histogram: SharedArrayBuffer };
}

export type StopReason = "closed" | "peer-exited" | "error";

export type WorkerMessage =
  | { type: "accepted" }
  | { type: "ready"; peerPid: number; regions: GuestRegion[]; memfd: boolean }
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
} as const;
export const METRIC_SLOTS = 7;
/** Latency histogram: bucket i counts faults served in (2^(i-1), 2^i] ns. */
export const HISTOGRAM_BUCKETS = 40;
