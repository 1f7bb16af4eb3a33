// The fault loop on the native batch helper: one ffi call serves a burst of faults (and REMOVEs, and
// write-protect faults) in C; what it cannot decide comes back here, message by message.

import { check } from "./errors.ts";
import type { FaultServing } from "./fault-serving.ts";
import type { BatchServer } from "./helper-binding.ts";
import { ESRCH } from "./linux.ts";
import { METRIC, type StopReason } from "./worker-protocol.ts";

/** How long the helper spins on an empty userfaultfd before returning: a fault within it costs no poll. */
const SPIN_NS = 200_000;
// Working-set pages copied per call between reads of the userfaultfd: about 1 MiB, a few hundred µs, so
// a real fault waits at most that long behind the prefetch.
const PREFETCH_SLICE_PAGES = 256;

/** The helper's per-message status for what it served or applied itself (see uffd-batch.c). */
const HANDLED = new Set([0, 1, 3, 4]);

export function runNativeLoop(serving: FaultServing, helper: BatchServer): StopReason {
  const { uffd, metrics } = serving;
  for (;;) {
    const started = performance.now();
    // While prefetching, an empty queue returns at once: the next slice goes in, and faults go first.
    const count = helper.serveBatch(
      uffd.fd,
      uffd.eventsAddress,
      uffd.maxEvents,
      serving.prefetching ? 0 : SPIN_NS,
    );
    if (count < 0) check("read(userfaultfd)", { value: -1, errno: -count });
    const stats = helper.takeStats();
    metrics.add(METRIC.removes, stats.removes);
    metrics.add(METRIC.writeProtectFaults, stats.writeProtect);
    const served = stats.copied + stats.present;
    if (served > 0) {
      metrics.add(METRIC.faults, served);
      metrics.add(METRIC.pagesCopied, stats.copied);
      metrics.add(METRIC.eexist, stats.present);
      if (serving.workingSet.length > 0) metrics.add(METRIC.prefetchHits, stats.present);
      metrics.add(METRIC.bytes, stats.bytes);
      metrics.latency(((performance.now() - started) * 1e6) / served, served);
    }
    if (count === 0) {
      // Quiet for a while, or a budget of faults served: look at the peer and the wake fd.
      const busy = served + stats.writeProtect > 0;
      if (busy) serving.servedAny = true;
      if (serving.prefetching) {
        const result = helper.prefetchSlice(uffd.fd, PREFETCH_SLICE_PAGES);
        const prefetched = helper.takePrefetchStats();
        metrics.add(METRIC.prefetched, prefetched.copied);
        metrics.add(METRIC.prefetchPresent, prefetched.present);
        metrics.add(METRIC.prefetchSkipped, prefetched.skipped);
        if (!serving.afterSlice(result)) return "peer-exited";
        const state = serving.checkPeer(0);
        if (state === "closed" || state === "peer-exited") return state;
        continue;
      }
      const state = busy ? serving.checkPeer(0) : serving.waitIdle();
      if (state === "closed" || state === "peer-exited") return state;
      continue;
    }
    for (let i = 0; i < count; i++) {
      const status = helper.status(i);
      if (HANDLED.has(status)) continue;
      if (status === -ESRCH) return "peer-exited"; // only a fault's ioctl reports it: the peer's mm is gone
      // Removed pages, absent chunks, EAGAIN and the unexpected go through the JS path, which knows what
      // to do; the helper applied the batch's REMOVEs before any of its faults, as the pure-ffi loop does.
      serving.take(uffd.event(i));
    }
    if (!serving.serveQueued()) return "peer-exited";
  }
}
