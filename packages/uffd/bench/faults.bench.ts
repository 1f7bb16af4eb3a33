// Prints JSON: faults/s and GiB/s for a region restored by PageFaultServer (pure-ffi path) and, in the
// same run against the same peer and memory file, by a C reference handler compiled from
// src/testing/c-handler.c (spinning on a non-blocking userfaultfd, batched reads, UFFDIO_COPY). Scenarios:
// 4 KiB pages with 1 and 4 faulting threads (sequential and random), a three-layer stack (a resumed
// paused sandbox) against the C handler serving the flattened file, dirty tracking (every page copied
// write-protected; the C handler does not protect), and 2 MiB pages when hugepages can be reserved
// (BENCH_SCENARIOS=name,name runs a subset). Both fault loops are measured: pure ffi and the native
// batch helper. Targets: on 4 KiB pages >= 0.75 of the C handler with the helper (never below 0.6) and
// >= 0.5 on pure ffi;
// >= 0.9 on 2 MiB pages. The C handler is started and listening before the peer connects; so is ours:
// a warm fault worker (prewarmPageFaultWorkers, as a service keeps them), and every run starts on a
// quiet host. A cold worker's start-up (~150 ms of module loading) is measured separately.
import { spawn } from "node:child_process";
import { once } from "node:events";
import {
  closeSync,
  fsyncSync,
  ftruncateSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { hostArch } from "@sbx/arch";
import { benchEnvironment } from "../../../scripts/bench-environment.ts";
import { openNativeHelper } from "../src/helper-binding.ts";
import { lseekExtents } from "../src/layers.ts";
import { resolveNativeHelper } from "../src/native-helper.ts";
import {
  PageFaultServer,
  type PageFaultServerOptions,
  prewarmPageFaultWorkers,
  warmPageFaultWorkerCount,
} from "../src/server.ts";
import {
  buildCHandler,
  buildTestPeer,
  runTestPeer,
  type TestPeerOptions,
  writeTestMemoryFile,
} from "../src/testing/peer.ts";

const MiB = 1024 * 1024;
const SIZE = Number(process.env.BENCH_REGION_MIB ?? 512) * MiB;
const dir = mkdtempSync(join(tmpdir(), "sbx-uffd-bench-"));
const memoryFile = join(dir, "mem");
const socketPath = join(dir, "uffd.sock");
writeTestMemoryFile(memoryFile, SIZE);
const peer = await buildTestPeer();
const nativeHelper = resolveNativeHelper("auto", hostArch());
const cHandler = await buildCHandler({ outDir: dir });

/**
 * A layered restore (what resuming a paused sandbox is): the base, then two sparse diffs, newest last.
 * Every third page comes from the first diff, every fifth from the second (which wins where both have
 * it), each with bytes of its own. The peer checks against, and the C handler serves, the flattened
 * file. The server gets each diff's pages as ranges, so the figure is the fault loop's; finding them
 * with SEEK_DATA (what a Firecracker Diff snapshot needs) is timed separately, as `layerScanMs`.
 */
function writeLayers() {
  const pages = SIZE / 4096;
  const flattened = readFileSync(memoryFile);
  const diffs = [
    { path: join(dir, "diff1"), every: 3, at: 1, mask: 0x5a },
    { path: join(dir, "diff2"), every: 5, at: 2, mask: 0xa5 },
  ];
  const layers: NonNullable<PageFaultServerOptions["layers"]> = [{ path: memoryFile }];
  for (const diff of diffs) {
    const ranges: { offset: number; length: number }[] = [];
    const fd = openSync(diff.path, "w");
    try {
      for (let page = diff.at; page < pages; page += diff.every) {
        const bytes = flattened.subarray(page * 4096, (page + 1) * 4096);
        for (let i = 0; i < bytes.length; i++) bytes[i] = (bytes[i] as number) ^ diff.mask;
        writeSync(fd, bytes, 0, bytes.length, page * 4096);
        ranges.push({ offset: page * 4096, length: 4096 });
      }
      ftruncateSync(fd, SIZE);
      fsyncSync(fd); // written back now, not by a flusher thread competing with the measured runs
    } finally {
      closeSync(fd);
    }
    layers.push({ path: diff.path, ranges });
  }
  const path = join(dir, "flattened");
  writeFileSync(path, flattened, { flush: true });
  return { layers, flattened: path, diffs: diffs.map((diff) => diff.path) };
}

/** How long finding the diffs' pages with SEEK_DATA/SEEK_HOLE takes: two ffi calls per extent, or the helper. */
function layerScanMs(diffs: string[]): Record<string, number> {
  const scan = (list: (fd: number, size: number) => unknown[]) => {
    const started = performance.now();
    let extents = 0;
    for (const path of diffs) {
      const fd = openSync(path, "r");
      try {
        extents += list(fd, SIZE).length;
      } finally {
        closeSync(fd);
      }
    }
    return { ms: Number((performance.now() - started).toFixed(1)), extents };
  };
  const pure = scan(lseekExtents);
  const cleanups: (() => void)[] = [];
  try {
    const native = nativeHelper ? scan(openNativeHelper(nativeHelper, cleanups).listExtents) : undefined;
    return { extents: pure.extents, pureFfi: pure.ms, ...(native ? { nativeHelper: native.ms } : {}) };
  } finally {
    for (const cleanup of cleanups) cleanup();
  }
}
const layered = writeLayers();

type Scenario = {
  name: string;
  peer: Partial<TestPeerOptions>;
  pageSize: number;
  layered?: boolean;
  /** Our server write-protects every page it copies (the C handler does not: that is the cost shown). */
  trackDirty?: boolean;
};
const scenarios: Scenario[] = [
  { name: "4k-seq-1thread", peer: { mode: "seq", threads: 1 }, pageSize: 4096 },
  { name: "4k-random-1thread", peer: { mode: "random", threads: 1 }, pageSize: 4096 },
  { name: "4k-seq-4threads", peer: { mode: "seq", threads: 4 }, pageSize: 4096 },
  { name: "4k-random-4threads", peer: { mode: "random", threads: 4 }, pageSize: 4096 },
  { name: "4k-random-4threads-3layers", peer: { mode: "random", threads: 4 }, pageSize: 4096, layered: true },
  {
    name: "4k-random-4threads-dirty",
    peer: { mode: "random", threads: 4 },
    pageSize: 4096,
    trackDirty: true,
  },
  {
    name: "2m-seq-1thread",
    peer: { mode: "seq", threads: 1, pageSize: 2097152, backing: "hugetlb" },
    pageSize: 2 * MiB,
  },
];

interface Figure {
  faultsPerSecond: number;
  gibPerSecond: number;
  touched: number;
}
const REPEATS = Number(process.env.BENCH_REPEATS ?? 3);
const median = (figures: Figure[]): Figure =>
  [...figures].sort((a, b) => a.faultsPerSecond - b.faultsPerSecond)[
    Math.floor(figures.length / 2)
  ] as Figure;
const figure = (touched: number, elapsedNs: number, pageSize: number): Figure => ({
  faultsPerSecond: Math.round(touched / (elapsedNs / 1e9)),
  gibPerSecond: Number(((touched * pageSize) / (elapsedNs / 1e9) / 2 ** 30).toFixed(3)),
  touched,
});

async function withServer(
  options: Partial<TestPeerOptions>,
  pageSize: number,
  nativeHelper: string,
  layers?: typeof layered,
  trackDirty = false,
): Promise<Figure> {
  await warmWorkerReady();
  await using server = new PageFaultServer({
    socketPath,
    ...(layers ? { layers: layers.layers } : { memoryFile }),
    nativeHelper,
    trackDirty,
  });
  await server.listen();
  const result = await runTestPeer({
    binary: peer,
    socketPath,
    memoryFile: layers?.flattened ?? memoryFile,
    size: SIZE,
    timeoutMs: 300_000,
    ...options,
  });
  if (result.mismatches) throw new Error(`${result.mismatches} pages came back wrong`);
  return figure(result.touched, result.elapsedNs ?? 1, pageSize);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits for the previous run's replacement worker to be spawned and loaded. */
async function warmWorkerReady(): Promise<void> {
  for (let i = 0; i < 200 && warmPageFaultWorkerCount() < 1; i++) await sleep(10);
  await sleep(300);
}

/** listen() → the handshake accepted, with no warm worker: what a cold start adds to a restore. */
async function coldStartMs(): Promise<number> {
  prewarmPageFaultWorkers(0);
  await sleep(300);
  await using server = new PageFaultServer({ socketPath, memoryFile });
  const started = performance.now();
  await server.listen();
  const peerRun = runTestPeer({
    binary: peer,
    socketPath,
    memoryFile,
    size: SIZE,
    mode: "none",
    holdMs: 100,
  });
  await server.ready;
  const ms = performance.now() - started;
  await peerRun;
  return Number(ms.toFixed(1));
}

async function withCHandler(
  options: Partial<TestPeerOptions>,
  pageSize: number,
  file = memoryFile,
): Promise<Figure> {
  await sleep(300);
  const handler = spawn(cHandler, [socketPath, file], { stdio: ["ignore", "pipe", "inherit"] });
  const exited = once(handler, "exit");
  await once(createInterface({ input: handler.stdout! }), "line");
  const result = await runTestPeer({
    binary: peer,
    socketPath,
    memoryFile: file,
    size: SIZE,
    timeoutMs: 300_000,
    ...options,
  });
  await exited;
  if (result.mismatches) throw new Error(`${result.mismatches} pages came back wrong (C handler)`);
  // Every touched page faulted once in the sequential modes; random touches repeat pages.
  return figure(result.touched, result.elapsedNs ?? 1, pageSize);
}

function reserveHugePages(count: number): (() => void) | undefined {
  const path = "/proc/sys/vm/nr_hugepages";
  try {
    const original = readFileSync(path, "utf8").trim();
    writeFileSync(path, String(Number(original) + count));
    const free = Number(/HugePages_Free:\s+(\d+)/.exec(readFileSync("/proc/meminfo", "utf8"))?.[1] ?? 0);
    const restore = () => writeFileSync(path, original);
    if (free < count) {
      restore();
      return undefined;
    }
    return restore;
  } catch {
    return undefined;
  }
}

const only = process.env.BENCH_SCENARIOS?.split(",").filter(Boolean);
const unknown = only?.filter((name) => !scenarios.some((scenario) => scenario.name === name)) ?? [];
if (unknown.length > 0)
  throw new Error(
    `BENCH_SCENARIOS: no scenario ${unknown.join(", ")} (${scenarios.map((s) => s.name).join(", ")})`,
  );

const results: Record<string, unknown> = {};
try {
  results.coldWorkerStartMs = await coldStartMs();
  results.layerScanMs = layerScanMs(layered.diffs);
  prewarmPageFaultWorkers(1);
  for (const scenario of scenarios.filter((s) => !only || only.includes(s.name))) {
    let restore: (() => void) | undefined;
    if (scenario.pageSize === 2 * MiB) {
      restore = reserveHugePages(SIZE / (2 * MiB) + 2);
      if (!restore) {
        results[scenario.name] = { skipped: `could not reserve ${SIZE / (2 * MiB) + 2} huge pages` };
        continue;
      }
    }
    try {
      // This machine is itself a VM: single runs vary by 2x. Interleave REPEATS runs per contender
      // and compare medians.
      const runs = { c: [] as Figure[], pure: [] as Figure[], native: [] as Figure[] };
      const layers = scenario.layered ? layered : undefined;
      const dirty = scenario.trackDirty ?? false;
      for (let r = 0; r < REPEATS; r++) {
        runs.c.push(await withCHandler(scenario.peer, scenario.pageSize, layers?.flattened));
        runs.pure.push(await withServer(scenario.peer, scenario.pageSize, "off", layers, dirty));
        if (nativeHelper)
          runs.native.push(await withServer(scenario.peer, scenario.pageSize, nativeHelper, layers, dirty));
      }
      const c = median(runs.c);
      const pure = median(runs.pure);
      const pureRatio = pure.faultsPerSecond / c.faultsPerSecond;
      const huge = scenario.pageSize === 2 * MiB;
      const entry: Record<string, unknown> = {
        cHandler: c,
        pureFfi: {
          ...pure,
          ratio: Number(pureRatio.toFixed(3)),
          target: { min: huge ? 0.9 : 0.5, met: pureRatio >= (huge ? 0.9 : 0.5) },
        },
      };
      if (nativeHelper) {
        const native = median(runs.native);
        const ratio = native.faultsPerSecond / c.faultsPerSecond;
        entry.nativeHelper = {
          ...native,
          ratio: Number(ratio.toFixed(3)),
          target: { min: huge ? 0.9 : 0.75, floor: 0.6, met: ratio >= (huge ? 0.9 : 0.75) },
        };
      } else {
        entry.nativeHelper = {
          skipped: "no native helper: run `pnpm --filter @sbx/uffd build:native` (needs gcc)",
        };
      }
      results[scenario.name] = entry;
    } finally {
      restore?.();
    }
  }
} finally {
  prewarmPageFaultWorkers(0);
  rmSync(dir, { recursive: true, force: true });
}

console.log(
  JSON.stringify(
    {
      environment: benchEnvironment({
        benchmark: "uffd page faults",
        regionMiB: SIZE / MiB,
        codePaths: {
          pureFfi: "worker thread: poll + read + ioctl per fault through ffi-rs",
          workers: "prewarmed, one loaded worker per run (coldWorkerStartMs: what a cold start adds)",
          nativeHelper: nativeHelper ?? "absent (pnpm --filter @sbx/uffd build:native)",
        },
      }),
      results,
    },
    null,
    2,
  ),
);
