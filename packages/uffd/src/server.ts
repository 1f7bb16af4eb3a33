// The page-fault server that restores a snapshot's memory: Firecracker connects once, hands over its
// userfaultfd, and every page the guest touches is copied in from the memory file by a worker thread.
import { chmodSync, chownSync, existsSync, lstatSync, rmSync, statSync, writeSync } from "node:fs";
import { connect } from "node:net";
import { pathToFileURL } from "node:url";
import { MessageChannel, type MessagePort, Worker } from "node:worker_threads";
import { hostArch, hostKernelRelease, type Logger, silentLogger, uffdWriteProtectSupported } from "@sbx/arch";
import { z } from "zod";
import { ChunkFetches, type RemoteMemorySource } from "./chunk-fetches.ts";
import { check, UffdError } from "./errors.ts";
import type { GuestRegion } from "./handshake.ts";
import { readyNativeHelper } from "./helper-binding.ts";
import { libc, resolveLibcSymbols } from "./libc.ts";
import {
  AF_UNIX,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  SIGKILL,
  SOCK_CLOEXEC,
  SOCK_STREAM,
  SYS_PIDFD_SEND_SIGNAL,
} from "./linux.ts";
import { type ByteRange, Memfd } from "./memfd.ts";
import { type MemoryHeader, ownedRanges, validateMemoryHeader } from "./memory-header.ts";
import { NativeMemory } from "./native-memory.ts";
import { faultWorkerExecArgv } from "./worker-exec-argv.ts";
import {
  type ChunkArrival,
  HISTOGRAM_BUCKETS,
  METRIC,
  METRIC_SLOTS,
  type StopReason,
  type WorkerConfig,
  type WorkerMessage,
} from "./worker-protocol.ts";
import { MAX_WORKING_SET_RANGES } from "./working-set.ts";

// The one logger of every sbx package, re-exported for callers that import it from here; its methods
// are optional, so every call below goes through `?.`.
export type { Logger } from "@sbx/arch";

const optionsSchema = z.strictObject({
  socketPath: z
    .string()
    .min(1)
    .refine((p) => Buffer.byteLength(p) <= 107, "a Unix socket path holds at most 107 bytes"),
  /** The snapshot's memory file; or `layers`, or `memory`. */
  memoryFile: z.string().min(1).optional(),
  /**
   * A build's memory: its header (see memory-header.ts) and where each build it names keeps its memory
   * file on this host. The header alone says which file serves a page; holes in the files mean nothing.
   */
  memory: z
    .strictObject({
      header: z.custom<MemoryHeader>((v) => typeof v === "object" && v !== null),
      paths: z.record(z.string(), z.string().min(1)),
      /**
       * Builds whose memory is not on this host (a build store): their chunks are fetched when a fault or
       * the working set needs them, while the other faults go on being served.
       */
      remote: z
        .record(
          z.string(),
          z.custom<RemoteMemorySource>(
            (v) =>
              typeof v === "object" &&
              v !== null &&
              typeof (v as RemoteMemorySource).fetchChunk === "function" &&
              Number.isSafeInteger((v as RemoteMemorySource).sizeBytes) &&
              Number.isSafeInteger((v as RemoteMemorySource).chunkSize),
            "a RemoteMemorySource ({ sizeBytes, chunkSize, fetchChunk })",
          ),
        )
        .optional(),
    })
    .optional(),
  /** How long one chunk of a remote build may take before the server stops with MEMORY_FETCH_FAILED. */
  fetchTimeoutMs: z.number().int().positive().default(30_000),
  /** Chunks of remote builds fetched at once. */
  fetchConcurrency: z.number().int().positive().max(64).default(8),
  /** A layer stack: the full memory file first, then diffs (newest last), each with its ranges or sparse. */
  layers: z
    .array(
      z.strictObject({
        path: z.string().min(1),
        ranges: z
          .array(
            z.strictObject({ offset: z.number().int().nonnegative(), length: z.number().int().positive() }),
          )
          .optional(),
      }),
    )
    .min(1)
    .max(256)
    .optional(),
  /** Memory-file offsets to copy in before the first fault (for example an earlier `faultTrace()`). */
  prefetch: z.array(z.number().int().nonnegative()).default([]),
  /**
   * Memory-file ranges to copy in from the handshake on (a build's recorded working set, see
   * working-set.ts), in order, in slices between faults, which always go first. Any list restores
   * exactly: pages outside the memory, already present or removed by a balloon are skipped.
   */
  workingSet: z
    .array(z.strictObject({ offset: z.number().int().nonnegative(), length: z.number().int().positive() }))
    .max(MAX_WORKING_SET_RANGES)
    .default([]),
  /** Record the pages the guest writes after the restore (write-protect faults); see `dirtyPages()`. */
  trackDirty: z.boolean().default(false),
  owner: z
    .strictObject({ uid: z.number().int().nonnegative(), gid: z.number().int().nonnegative() })
    .optional(),
  expectedPeerPid: z.number().int().positive().optional(),
  /** Refuse a peer that does not run as this uid (SO_PEERCRED), e.g. a jailed Firecracker's. */
  expectedPeerUid: z.number().int().nonnegative().optional(),
  acceptTimeoutMs: z.number().int().positive().default(10_000),
  handshakeTimeoutMs: z.number().int().positive().default(10_000),
  signal: z.instanceof(AbortSignal).optional(),
  /** `auto` (default): the bundled native batch helper when present, else pure ffi. `off`, or a path. */
  nativeHelper: z.string().min(1).default("auto"),
  arch: z.enum(["amd64", "arm64"]).optional(),
  logger: z.custom<Logger>((v) => typeof v === "object" && v !== null).optional(),
});
/** What a PageFaultServer serves, from where, for whom (see the fields' comments). */
export type PageFaultServerOptions = z.input<typeof optionsSchema>;

/** Firecracker's accepted handshake. */
export interface PageFaultServerReady {
  peerPid: number;
  regions: GuestRegion[];
  /** Whether the peer sent a memfd with its userfaultfd (see `takeMemfd()`). */
  memfd: boolean;
  /** Whether dirty pages are being recorded (asked for, and possible here). */
  trackDirty: boolean;
}

/** Why a PageFaultServer stopped. */
export interface PageFaultServerStop {
  /** `closed`: by close(); `peer-exited`: Firecracker hung up; `error`: see `error`. */
  reason: StopReason;
  /** Firecracker's pid, when it connected: a stopped server leaves it hanging on its next fault. */
  peerPid: number | undefined;
  error: UffdError | undefined;
}

/** What a PageFaultServer did so far: faults, pages, prefetch, chunks and latency. */
export interface PageFaultMetrics {
  faults: number;
  pagesCopied: number;
  zeroPages: number;
  removes: number;
  bytes: number;
  eagainRetries: number;
  eexist: number;
  /** Pages copied in ahead of the guest: the `prefetch` list and the working set. */
  prefetched: number;
  /** Faults that installed their page (on demand): the faults a prefetch did not save. */
  faultsOnDemand: number;
  /** Faults whose page was present by the time they were served, with a working set: the prefetch won. */
  prefetchHits: number;
  /** Working-set pages already present when the prefetch reached them. */
  prefetchPresent: number;
  /** Working-set pages skipped: outside every region, or removed by a balloon. */
  prefetchSkipped: number;
  /** Whether the whole working set was gone through (false while it runs, or when it was given up). */
  prefetchComplete: boolean;
  /** Whether the working set was given up as stale: the guest kept faulting pages it does not list. */
  prefetchStale: boolean;
  writeProtectFaults: number;
  /** Faults that waited for their chunk of a remote build (the loop served others meanwhile). */
  faultsDeferred: number;
  /** Chunks of remote builds fetched and mapped in. */
  chunksFetched: number;
  /** Mean time from a chunk's request to its arrival, in ms (0 without remote builds). */
  chunkFetchMeanMs: number;
  /** Service time per fault (event read to page installed), from a log2 histogram: upper bounds. */
  latencyP50Us: number;
  latencyP99Us: number;
}

type ServerLayer = WorkerConfig["layers"][number] & { source?: RemoteMemorySource | undefined };

/** Per build of the header, newest last: its local file, or its remote source (a lazy layer). */
function layersOfMemory(memory: {
  header: MemoryHeader;
  paths: Record<string, string>;
  remote?: Record<string, RemoteMemorySource> | undefined;
}): ServerLayer[] {
  const header = validateMemoryHeader(memory.header);
  return header.builds.map((build) => {
    const ranges = ownedRanges(header, build);
    const path = memory.paths[build];
    if (path !== undefined) return { path, ranges };
    const source = memory.remote?.[build];
    if (!source)
      throw new UffdError(
        "INVALID_OPTIONS",
        `PageFaultServer: no memory file path or remote source for build ${build}`,
      );
    if (source.sizeBytes !== header.memorySize || source.chunkSize <= 0 || source.chunkSize % 4096 !== 0)
      throw new UffdError(
        "INVALID_OPTIONS",
        `PageFaultServer: build ${build}'s remote memory (${source.sizeBytes} bytes in chunks of ${source.chunkSize}) does not fit its header (${header.memorySize} bytes, page-aligned chunks)`,
      );
    return { lazy: { size: source.sizeBytes, chunkSize: source.chunkSize }, ranges, source };
  });
}

const workerUrl = (() => {
  const here = typeof __filename === "string" ? pathToFileURL(__filename).href : import.meta.url;
  return new URL(here.endsWith(".ts") ? "./fault-worker.ts" : "./fault-worker.js", here);
})();

/** Adds one to an eventfd: what wakes the fault loop's poll. */
function signalEventfd(fd: number): void {
  const one = Buffer.alloc(8);
  one.writeBigUInt64LE(1n);
  writeSync(fd, one);
}

const warmWorkers: Worker[] = [];
let warmTarget = 0;

/** Every fault worker starts through here: see resolveLibcSymbols for why the main thread goes first. */
function startFaultWorker(workerData: WorkerConfig | undefined): Worker {
  resolveLibcSymbols();
  return new Worker(workerUrl, {
    workerData,
    execArgv: faultWorkerExecArgv(),
    ...(workerData?.lazy ? { transferList: [workerData.lazy.port] } : {}),
  });
}

function spawnWarmWorker(): void {
  const worker = startFaultWorker(undefined);
  worker.unref(); // an idle warm worker never keeps the process alive
  worker.once("exit", () => {
    const at = warmWorkers.indexOf(worker);
    if (at >= 0) warmWorkers.splice(at, 1);
  });
  warmWorkers.push(worker);
}

function takeWarmWorker(): Worker | undefined {
  const worker = warmWorkers.shift();
  if (worker) worker.removeAllListeners("exit");
  return worker;
}

// Not at take time: a new worker's start-up would run during the restore that took the warm one.
function refillWarmWorkers(): void {
  while (warmWorkers.length < warmTarget) spawnWarmWorker();
}

/** A restore that never goes quiet still gets its warm worker replaced after this long. */
const REFILL_FALLBACK_MS = 3_000;

/** How many warm fault workers wait for a server right now (for metrics and tests). */
export function warmPageFaultWorkerCount(): number {
  return warmWorkers.length;
}

/**
 * Keeps `count` fault workers started ahead of time, so a server's `listen()` hands Firecracker a worker
 * that is already loaded (saves ~150 ms per restore on a busy host). A worker taken by a server is
 * replaced once that server's restore goes quiet (or its peer leaves), never during the fault burst.
 * 0 (the default) stops warming and ends the idle ones.
 */
export function prewarmPageFaultWorkers(count: number): void {
  if (!Number.isInteger(count) || count < 0)
    throw new UffdError("INVALID_OPTIONS", "prewarm count must be a non-negative integer");
  warmTarget = count;
  while (warmWorkers.length < warmTarget) spawnWarmWorker();
  while (warmWorkers.length > warmTarget) void warmWorkers.pop()?.terminate();
}

/**
 * `await using server = new PageFaultServer({ socketPath, memoryFile }); await server.listen();` then
 * `PUT /snapshot/load` with `mem_backend: { backend_type: "Uffd", backend_path: socketPath }`.
 */
export class PageFaultServer implements AsyncDisposable {
  readonly socketPath: string;
  /** Resolves when Firecracker's handshake was accepted; rejects if the server stops before. */
  readonly ready: Promise<PageFaultServerReady>;
  /** Resolves (never rejects) when the server stopped, with why. */
  readonly stopped: Promise<PageFaultServerStop>;

  /** Which fault loop runs: `native` (the batch helper) or `pure-ffi`. */
  readonly codePath: "native" | "pure-ffi";
  readonly #nativeHelper: string | undefined;
  readonly #options: z.output<typeof optionsSchema>;
  readonly #layers: ServerLayer[];
  /** With remote builds: the fetches, the port arrivals go to the worker on, and the eventfd it polls. */
  #fetches: ChunkFetches | undefined;
  #arrivals: MessagePort | undefined;
  #notifyFd = -1;
  #fetchError: UffdError | undefined;
  #dirty = new SharedArrayBuffer(0);
  #trace = new SharedArrayBuffer(0);
  readonly #traceCount = new SharedArrayBuffer(4);
  #memfdFd: number | undefined;
  #refillTimer: NodeJS.Timeout | undefined;
  readonly warnings: string[] = [];
  readonly #logger: Logger;
  readonly #resolveReady: (ready: PageFaultServerReady) => void;
  readonly #rejectReady: (error: UffdError) => void;
  readonly #resolveStopped: (stop: PageFaultServerStop) => void;
  readonly #counters = new SharedArrayBuffer(METRIC_SLOTS * 8);
  readonly #histogram = new SharedArrayBuffer(HISTOGRAM_BUCKETS * 4);
  #listenFd = -1;
  #wakeFd = -1;
  #worker: Worker | undefined;
  #exited: Promise<void> | undefined;
  #stop: PageFaultServerStop | undefined;
  #socketCreated = false;
  #closing = false;
  /** The worker's error, when it crashed (reported at its exit, after the crash clean-up). */
  #crash: Error | undefined;
  /** Set once the worker said it stopped: it closed what it owns, and nothing of it is left here. */
  #workerReported = false;
  /** What the worker owns once a peer connected: closed here only if the worker dies without reporting. */
  #workerFds: number[] = [];
  #peerPid: number | undefined;
  /** A pidfd of the peer (Firecracker), so it can be killed without racing a reused pid; -1 if none. */
  #peerPidfd = -1;

  constructor(options: PageFaultServerOptions) {
    const parsed = optionsSchema.safeParse(options);
    if (!parsed.success)
      throw new UffdError("INVALID_OPTIONS", `PageFaultServer: ${z.prettifyError(parsed.error)}`);
    this.#options = parsed.data;
    this.#logger = parsed.data.logger ?? silentLogger;
    this.socketPath = parsed.data.socketPath;
    const sources = [parsed.data.memoryFile, parsed.data.layers, parsed.data.memory].filter(
      (source) => source !== undefined,
    );
    if (sources.length !== 1)
      throw new UffdError(
        "INVALID_OPTIONS",
        "PageFaultServer: give exactly one of memoryFile, layers and memory",
      );
    this.#layers = parsed.data.memory
      ? layersOfMemory(parsed.data.memory)
      : (parsed.data.layers ?? [{ path: parsed.data.memoryFile as string }]);
    // Opened here on the main thread: a worker must never be the first to open it (see prepareNativeHelper).
    this.#nativeHelper = readyNativeHelper(
      parsed.data.nativeHelper,
      parsed.data.arch ?? hostArch(),
      (message) => {
        this.warnings.push(message);
        this.#logger.warn?.({}, message);
      },
    );
    this.codePath = this.#nativeHelper ? "native" : "pure-ffi";
    const ready = Promise.withResolvers<PageFaultServerReady>();
    const stopped = Promise.withResolvers<PageFaultServerStop>();
    this.ready = ready.promise;
    this.ready.catch(() => {}); // a caller that only awaits `stopped` must not see an unhandled rejection
    this.stopped = stopped.promise;
    this.#resolveReady = ready.resolve;
    this.#rejectReady = ready.reject;
    this.#resolveStopped = stopped.resolve;
  }

  /** Creates the 0600 socket and starts the worker; resolves once Firecracker can connect. */
  async listen(): Promise<void> {
    if (this.#worker) throw new UffdError("INVALID_OPTIONS", "listen() was already called");
    const { socketPath, signal } = this.#options;
    if (signal?.aborted) throw new UffdError("CLOSED", "aborted before listen()");
    await this.#replaceStaleSocket();
    try {
      this.#listenFd = check("socket", libc.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      const address = new NativeMemory(112);
      try {
        address.view.setUint16(0, AF_UNIX, true);
        address.bytes.write(socketPath, 2, "utf8");
        check("bind", libc.bind(this.#listenFd, address.address, 2 + Buffer.byteLength(socketPath) + 1));
      } finally {
        address.free();
      }
      this.#socketCreated = true;
      // Before listen(): until then a connect is refused, so nobody slips in while the mode is wider.
      chmodSync(socketPath, 0o600);
      if (this.#options.owner) chownSync(socketPath, this.#options.owner.uid, this.#options.owner.gid);
      check("listen", libc.listen(this.#listenFd, 1));
      this.#wakeFd = check("eventfd", libc.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    } catch (error) {
      this.#releaseMainFds();
      throw error;
    }
    const base = this.#layers[0] as ServerLayer;
    let baseSize: number;
    try {
      baseSize = base.lazy ? base.lazy.size : statSync(base.path as string).size;
    } catch (cause) {
      this.#releaseMainFds();
      throw new UffdError("MEMORY_FILE_INVALID", `cannot read ${base.path}`, { cause });
    }
    let lazy: WorkerConfig["lazy"];
    if (this.#layers.some((layer) => layer.source)) {
      const channel = new MessageChannel();
      this.#arrivals = channel.port1;
      this.#notifyFd = check("eventfd", libc.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      lazy = { port: channel.port2, notifyFd: this.#notifyFd };
      this.#fetches = new ChunkFetches({
        sources: this.#layers.map((layer) => layer.source),
        concurrency: this.#options.fetchConcurrency,
        timeoutMs: this.#options.fetchTimeoutMs,
        deliver: (chunk, path) => this.#deliverChunk({ ...chunk, path }),
        fail: (chunk, cause) => this.#failFetch(chunk, cause),
      });
    }
    const pages = Math.ceil(baseSize / 4096);
    this.#dirty = new SharedArrayBuffer(pages);
    this.#trace = new SharedArrayBuffer(Math.min(pages, 1 << 20) * 8);
    const arch = this.#options.arch ?? hostArch();
    const release = hostKernelRelease();
    const writeProtect = {
      anonymous: uffdWriteProtectSupported({ arch, release, backing: "anonymous" }).supported,
      shmem: uffdWriteProtectSupported({ arch, release, backing: "shmem" }).supported,
      hugetlb: uffdWriteProtectSupported({ arch, release, backing: "hugetlb" }).supported,
    };
    const config: WorkerConfig = {
      socketPath,
      listenFd: this.#listenFd,
      wakeFd: this.#wakeFd,
      // The sources stay here: functions cannot cross to the worker, and it only needs the layout.
      layers: this.#layers.map(({ source: _source, ...layer }) => layer),
      lazy,
      prefetch: this.#options.prefetch,
      workingSet: this.#options.workingSet,
      trackDirty: this.#options.trackDirty,
      writeProtect,
      acceptTimeoutMs: this.#options.acceptTimeoutMs,
      handshakeTimeoutMs: this.#options.handshakeTimeoutMs,
      expectedPeerPid: this.#options.expectedPeerPid,
      expectedPeerUid: this.#options.expectedPeerUid,
      nativeHelper: this.#nativeHelper,
      metrics: {
        counters: this.#counters,
        histogram: this.#histogram,
        dirty: this.#dirty,
        trace: this.#trace,
        traceCount: this.#traceCount,
      },
    };
    const warm = takeWarmWorker();
    const worker = warm ?? startFaultWorker(config);
    if (warm) {
      warm.ref();
      warm.postMessage(config, lazy ? [lazy.port] : []);
    }
    this.#worker = worker;
    this.#refillTimer = setTimeout(() => this.#refill(), REFILL_FALLBACK_MS);
    this.#refillTimer.unref();
    worker.on("message", (message: WorkerMessage) => this.#onMessage(message));
    worker.on("error", (error) => {
      this.#crash = error;
    });
    this.#exited = new Promise<void>((resolve) => worker.once("exit", () => resolve())).then(() => {
      const crash = this.#workerReported ? undefined : this.#cleanUpAfterCrash();
      // The memfd stays: it is what a caller exports guest memory from after Firecracker exited, and
      // the worker may exit before the caller gets to takeMemfd(). close() releases it if untaken.
      this.#releaseMainFds({ keepMemfd: true });
      this.#refill();
      this.#finish({
        reason: "error",
        peerPid: this.#peerPid,
        error: crash ?? new UffdError("CLOSED", "the fault worker exited"),
      });
    });
    signal?.addEventListener("abort", () => void this.close(), { once: true });
    this.#logger.debug?.({ socketPath }, "page-fault server listening");
  }

  metrics(): PageFaultMetrics {
    const counters = new Float64Array(this.#counters);
    const histogram = new Int32Array(this.#histogram);
    const counts = Array.from(histogram, (_, i) => Atomics.load(histogram, i));
    const total = counts.reduce((a, b) => a + b, 0);
    const percentile = (p: number) => {
      if (total === 0) return 0;
      let seen = 0;
      for (let i = 0; i < counts.length; i++) {
        seen += counts[i] ?? 0;
        if (seen >= total * p) return 2 ** i / 1000;
      }
      return 2 ** counts.length / 1000;
    };
    return {
      faults: counters[METRIC.faults] ?? 0,
      pagesCopied: counters[METRIC.pagesCopied] ?? 0,
      zeroPages: counters[METRIC.zeroPages] ?? 0,
      removes: counters[METRIC.removes] ?? 0,
      bytes: counters[METRIC.bytes] ?? 0,
      eagainRetries: counters[METRIC.eagain] ?? 0,
      eexist: counters[METRIC.eexist] ?? 0,
      prefetched: counters[METRIC.prefetched] ?? 0,
      faultsOnDemand: (counters[METRIC.faults] ?? 0) - (counters[METRIC.eexist] ?? 0),
      prefetchHits: counters[METRIC.prefetchHits] ?? 0,
      prefetchPresent: counters[METRIC.prefetchPresent] ?? 0,
      prefetchSkipped: counters[METRIC.prefetchSkipped] ?? 0,
      prefetchComplete: (counters[METRIC.prefetchComplete] ?? 0) === 1,
      prefetchStale: (counters[METRIC.prefetchStale] ?? 0) === 1,
      writeProtectFaults: counters[METRIC.writeProtectFaults] ?? 0,
      faultsDeferred: counters[METRIC.faultsDeferred] ?? 0,
      chunksFetched: counters[METRIC.chunksInstalled] ?? 0,
      chunkFetchMeanMs: this.#fetches?.fetched ? this.#fetches.waitMs / this.#fetches.fetched : 0,
      latencyP50Us: percentile(0.5),
      latencyP99Us: percentile(0.99),
    };
  }

  /** Memory-file ranges the guest wrote since the restore (with `trackDirty`), merged, in order. */
  dirtyPages(): ByteRange[] {
    const dirty = new Uint8Array(this.#dirty);
    const ranges: ByteRange[] = [];
    for (let page = 0; page < dirty.length; page++) {
      if (!Atomics.load(dirty, page)) continue;
      const last = ranges.at(-1);
      if (last && last.offset + last.length === page * 4096) last.length += 4096;
      else ranges.push({ offset: page * 4096, length: 4096 });
    }
    return ranges;
  }

  /** Memory-file offsets of the missing-page faults served, in order: a prefetch list for next time. */
  faultTrace(): number[] {
    const count = Atomics.load(new Int32Array(this.#traceCount), 0);
    return Array.from(new Float64Array(this.#trace, 0, count));
  }

  /**
   * The guest memory memfd the peer sent, now owned by the caller (export memory with it after
   * Firecracker exits); undefined when the peer sent none or it was already taken.
   */
  takeMemfd(): Memfd | undefined {
    const fd = this.#memfdFd;
    this.#memfdFd = undefined;
    return fd === undefined ? undefined : Memfd.fromFd(fd);
  }

  /** Wakes the fault loop, waits for it to exit (it closes what it owns), then closes the rest. */
  async close(): Promise<PageFaultServerStop> {
    this.#closing = true;
    if (!this.#worker) {
      this.#releaseMainFds();
      this.#finish({ reason: "closed", peerPid: undefined, error: undefined });
      return this.stopped;
    }
    if (this.#wakeFd >= 0) {
      try {
        signalEventfd(this.#wakeFd);
      } catch {
        // already released: the worker has exited
      }
    }
    await this.#exited;
    this.#releaseMainFds();
    return this.stopped;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #onMessage(message: WorkerMessage): void {
    if (message.type === "accepted") {
      // One connection only: stop listening and remove the socket file.
      this.#closeListener();
      this.#workerFds = [message.connectionFd];
      this.#peerPid = message.peerPid;
      this.#peerPidfd = message.peerPidfd;
    } else if (message.type === "ready") {
      this.#workerFds.push(...message.receivedFds);
      this.#logger.info?.(
        { peerPid: message.peerPid, regions: message.regions.length },
        "handshake accepted",
      );
      this.#memfdFd = message.memfdFd;
      this.#resolveReady({
        peerPid: message.peerPid,
        regions: message.regions,
        memfd: message.memfdFd !== undefined,
        trackDirty: message.trackDirty,
      });
    } else if (message.type === "fetch") {
      this.#fetches?.request({ layer: message.layer, index: message.index }, message.urgent);
    } else if (message.type === "quiet") {
      this.#refill();
    } else if (message.type === "warning") {
      this.warnings.push(message.message);
      this.#logger.warn?.({}, message.message);
    } else {
      this.#workerReported = true;
      this.#workerFds = [];
      this.#closeListener(); // the worker is done with it, whatever happened
      const error = message.error
        ? new UffdError(message.error.code, message.error.message, {
            ...(message.error.errno === undefined ? {} : { errno: message.error.errno }),
            ...(message.error.syscall === undefined ? {} : { syscall: message.error.syscall }),
            ...(message.error.address === undefined ? {} : { address: message.error.address }),
          })
        : undefined;
      if (message.reason !== "closed" && !this.#closing)
        this.#logger.warn?.(
          { reason: message.reason, peerPid: message.peerPid, error: error?.message },
          "page-fault server stopped: Firecracker will hang on its next fault and must be killed",
        );
      this.#finish({ reason: message.reason, peerPid: message.peerPid, error });
    }
  }

  #refill(): void {
    clearTimeout(this.#refillTimer);
    refillWarmWorkers();
  }

  /**
   * The worker died without reporting (an uncaught error, terminated, out of memory): the fds it owned
   * are still open, and nothing will serve Firecracker's next fault. Firecracker keeps its own copy of
   * the userfaultfd, so closing ours does not wake it: it would hang, so it is killed (through its
   * pidfd, which cannot reach a process that reused the pid), and the crash says so.
   */
  #cleanUpAfterCrash(): UffdError {
    for (const fd of this.#workerFds) libc.close(fd);
    this.#workerFds = [];
    let killed = false;
    if (this.#peerPidfd >= 0)
      killed = libc.syscall4(SYS_PIDFD_SEND_SIGNAL, this.#peerPidfd, SIGKILL, 0, 0).value === 0;
    const why = this.#crash?.message ?? "it exited without stopping";
    const peer =
      this.#peerPid === undefined
        ? "no peer had connected"
        : killed
          ? `Firecracker (pid ${this.#peerPid}) was killed: nothing would serve its next fault`
          : `Firecracker (pid ${this.#peerPid}) could not be killed and will hang on its next fault: kill it`;
    this.#logger.error?.({ peerPid: this.#peerPid, killed }, `the fault worker crashed: ${why}; ${peer}`);
    return new UffdError("SYSCALL_FAILED", `the fault worker crashed: ${why}; ${peer}`, {
      ...(this.#crash ? { cause: this.#crash } : {}),
    });
  }

  /** Hands an arrived chunk to the worker: a message on its port, then a bump of the fd it polls. */
  #deliverChunk(arrival: ChunkArrival): void {
    if (!this.#arrivals || this.#notifyFd < 0) return;
    this.#arrivals.postMessage(arrival);
    signalEventfd(this.#notifyFd);
  }

  /**
   * A chunk could not be had (the store is down or slow past the deadline, or its bytes are corrupt):
   * the fault waiting for it can never be served, so the server stops with MEMORY_FETCH_FAILED, and
   * whoever owns the VM kills it (the orchestrator's sandbox does, on `stopped`).
   */
  #failFetch(chunk: { layer: number; index: number }, cause: unknown): void {
    const build = this.#options.memory?.header.builds[chunk.layer] ?? `layer ${chunk.layer}`;
    const why = cause instanceof Error ? cause.message : String(cause);
    this.#fetchError = new UffdError(
      "MEMORY_FETCH_FAILED",
      `chunk ${chunk.index} of build ${build}'s memory could not be fetched: ${why}`,
      { cause },
    );
    this.#logger.error?.({ build, chunk: chunk.index, error: why }, "a memory chunk could not be fetched");
    void this.close();
  }

  #finish(stop: PageFaultServerStop): void {
    if (this.#stop) return;
    this.#fetches?.stop();
    if (this.#fetchError) stop = { reason: "error", peerPid: stop.peerPid, error: this.#fetchError };
    this.#stop = stop;
    this.#rejectReady(
      stop.error ?? new UffdError("CLOSED", `the server stopped (${stop.reason}) before a handshake`),
    );
    this.#resolveStopped(stop);
  }

  #closeListener(): void {
    if (this.#listenFd >= 0) libc.close(this.#listenFd);
    this.#listenFd = -1;
    if (this.#socketCreated) rmSync(this.socketPath, { force: true });
    this.#socketCreated = false;
  }

  #releaseMainFds(options: { keepMemfd?: boolean } = {}): void {
    this.#closeListener();
    if (this.#memfdFd !== undefined && !options.keepMemfd) {
      libc.close(this.#memfdFd);
      this.#memfdFd = undefined;
    }
    if (this.#wakeFd >= 0) libc.close(this.#wakeFd);
    this.#wakeFd = -1;
    this.#fetches?.stop();
    this.#arrivals?.close();
    this.#arrivals = undefined;
    if (this.#notifyFd >= 0) libc.close(this.#notifyFd);
    this.#notifyFd = -1;
    if (this.#peerPidfd >= 0) libc.close(this.#peerPidfd);
    this.#peerPidfd = -1;
  }

  /** A leftover socket file is removed only when nothing listens on it; anything else is refused. */
  async #replaceStaleSocket(): Promise<void> {
    const path = this.socketPath;
    if (!existsSync(path)) return;
    if (!lstatSync(path).isSocket())
      throw new UffdError("SOCKET_IN_USE", `${path} exists and is not a socket; refusing to replace it`);
    const listening = await new Promise<boolean>((resolve) => {
      const probe = connect(path);
      probe.once("connect", () => {
        probe.destroy();
        resolve(true);
      });
      probe.once("error", () => resolve(false));
    });
    if (listening) throw new UffdError("SOCKET_IN_USE", `something is listening on ${path}`);
    rmSync(path, { force: true });
  }
}
