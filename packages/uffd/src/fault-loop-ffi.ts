// The fault loop without the native helper: while faults keep coming, read the non-blocking userfaultfd
// directly (no poll per fault); after a few empty reads, block in poll(). The peer and the wake fd are
// checked at least every 64 busy rounds.
import type { FaultServing } from "./fault-serving.ts";
import type { StopReason } from "./worker-protocol.ts";

/** Empty non-blocking reads (~3 µs each) tried before blocking in poll(). */
const SPIN_READS = 16;
/** The pure-ffi prefetch pays an ffi call per page: smaller slices than the helper's keep a fault's wait alike. */
const PREFETCH_SLICE_PAGES = 32;

export function runFfiLoop(serving: FaultServing): StopReason {
  let idle = 0;
  let busy = 0;
  let checkNextRead = true;
  const checkNow = (): StopReason | undefined => {
    if (++busy % 64 !== 0) return undefined;
    const state = serving.checkPeer(0);
    return state === "closed" || state === "peer-exited" ? state : undefined;
  };
  for (;;) {
    const drained = serving.drain(checkNextRead);
    checkNextRead = false;
    if (drained > 0) {
      idle = 0;
      serving.servedAny = true;
      if (!serving.serveQueued()) return "peer-exited";
      const stop = checkNow();
      if (stop) return stop;
      continue;
    }
    if (serving.prefetching) {
      if (!serving.afterSlice(serving.prefetchSliceFfi(PREFETCH_SLICE_PAGES))) return "peer-exited";
      const stop = checkNow();
      if (stop) return stop;
      checkNextRead = true;
      continue;
    }
    if (++idle < SPIN_READS) continue;
    idle = 0;
    const state = serving.waitIdle();
    if (state === "closed" || state === "peer-exited") return state;
    checkNextRead = true;
  }
}
