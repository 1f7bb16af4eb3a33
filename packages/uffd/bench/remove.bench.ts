// Prints JSON: faults/s with a hostile balloon's REMOVE events on record against the same restore
// without any, measured in the same run on both fault loops. The peer first removes BENCH_REMOVES
// (default 100,000) single pages, every other page of a region above the touched part, so none merge;
// then it touches BENCH_TOUCH_MIB (default 128 MiB) of pages below them, each a fault served from the
// memory file. The baseline touches the same pages of a region without the removed part. Target: with
// the removals, faults/s >= 0.8 of the baseline on each loop (removed pages are one bit each, so the
// lookup does not grow with them; a list of ranges scanned per fault did, and past 8,192 ranges the
// native helper handed every fault to the JS loop).
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostArch } from "@sbx/arch";
import { benchEnvironment } from "../../../scripts/bench-environment.ts";
import { resolveNativeHelper } from "../src/native-helper.ts";
import { PageFaultServer, prewarmPageFaultWorkers, warmPageFaultWorkerCount } from "../src/server.ts";
import { buildTestPeer, runTestPeer, writeTestMemoryFile } from "../src/testing/peer.ts";

const MiB = 1024 * 1024;
const PAGE = 4096;
const REMOVES = Number(process.env.BENCH_REMOVES ?? 100_000);
const TOUCH = Number(process.env.BENCH_TOUCH_MIB ?? 128) * MiB;
const REPEATS = Number(process.env.BENCH_REPEATS ?? 3);
const WITH_REMOVES = TOUCH + 2 * REMOVES * PAGE;

const dir = mkdtempSync(join(tmpdir(), "sbx-uffd-remove-bench-"));
const memoryFile = join(dir, "mem");
const socketPath = join(dir, "uffd.sock");
// Real bytes where pages are touched; the removed part is a hole (never read: removed pages are zeros).
writeTestMemoryFile(memoryFile, TOUCH);
const fd = openSync(memoryFile, "r+");
ftruncateSync(fd, WITH_REMOVES);
closeSync(fd);
const peer = await buildTestPeer();
const nativeHelper = resolveNativeHelper("auto", hostArch());
const median = (values: number[]) =>
  [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] as number;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Both runs start with a loaded worker (as a service keeps them, see faults.bench.ts): otherwise the
 * baseline's first faults would wait for a cold worker's start-up, and the run with removals, whose
 * REMOVEs come first, would not.
 */
async function warmWorkerReady(): Promise<void> {
  for (let i = 0; i < 200 && warmPageFaultWorkerCount() < 1; i++) await sleep(10);
  await sleep(300);
}

async function faultsPerSecond(helper: string, removes: number): Promise<{ rate: number; removes: number }> {
  prewarmPageFaultWorkers(1);
  await warmWorkerReady();
  await using server = new PageFaultServer({ socketPath, memoryFile, nativeHelper: helper });
  await server.listen();
  // No replacement worker during the run: the server refills after 3 s even without a quiet moment,
  // and the 100,000 REMOVEs take about that long, so its start-up would land in the measured pass.
  prewarmPageFaultWorkers(0);
  const result = await runTestPeer({
    binary: peer,
    socketPath,
    memoryFile,
    size: removes > 0 ? WITH_REMOVES : TOUCH,
    mode: "seq",
    preRemove: removes,
    timeoutMs: 600_000,
  });
  if (result.mismatches) throw new Error(`${result.mismatches} pages came back wrong`);
  if (result.touched !== TOUCH / PAGE)
    throw new Error(`touched ${result.touched} pages, not ${TOUCH / PAGE}`);
  await server.stopped;
  return {
    rate: Math.round(result.touched / ((result.elapsedNs ?? 1) / 1e9)),
    removes: server.metrics().removes,
  };
}

const results: Record<string, unknown> = {};
try {
  const loops: [string, string | undefined][] = [
    ["pureFfi", "off"],
    ["nativeHelper", nativeHelper],
  ];
  for (const [name, helper] of loops) {
    if (!helper) {
      results[name] = { skipped: "no native helper: run `pnpm --filter @sbx/uffd build:native` (needs gcc)" };
      continue;
    }
    const baseline: number[] = [];
    const removed: number[] = [];
    let recorded = 0;
    // Interleaved, medians compared: this machine is itself a VM, and single runs vary.
    for (let r = 0; r < REPEATS; r++) {
      baseline.push((await faultsPerSecond(helper, 0)).rate);
      const run = await faultsPerSecond(helper, REMOVES);
      removed.push(run.rate);
      recorded = run.removes;
    }
    const ratio = median(removed) / median(baseline);
    results[name] = {
      baselineFaultsPerSecond: median(baseline),
      withRemovesFaultsPerSecond: median(removed),
      removeEvents: recorded,
      ratio: Number(ratio.toFixed(3)),
      target: { min: 0.8, met: ratio >= 0.8 },
    };
  }
} finally {
  prewarmPageFaultWorkers(0);
  rmSync(dir, { recursive: true, force: true });
}

console.log(
  JSON.stringify(
    {
      environment: benchEnvironment({
        benchmark: "uffd faults after REMOVE events",
        touchedMiB: TOUCH / MiB,
        removedPages: REMOVES,
        repeats: REPEATS,
        workers: "prewarmed, one loaded worker per run",
      }),
      results,
    },
    null,
    2,
  ),
);
