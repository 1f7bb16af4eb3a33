// The ffi-rs binding of the optional native helper (native/uffd-batch.c): the server opens and checks
// it on the main thread, the fault worker serves bursts of faults and lists a diff's extents with it,
// and the memfd export writes ranges with it. native-helper.ts finds and builds it.
import { existsSync } from "node:fs";
import type { Arch } from "@sbx/arch";
import { DataType, load, open } from "ffi-rs";
import { UffdError } from "./errors.ts";
import type { GuestRegion } from "./handshake.ts";
import type { ByteExtent, Layers } from "./layers.ts";
import { addressOf } from "./libc.ts";
import { UFFDIO_COPY_MODE_WP } from "./linux.ts";
import { NATIVE_HELPER_ABI, resolveNativeHelper } from "./native-helper.ts";
import { NativeMemory } from "./native-memory.ts";
import type { RemovedPages } from "./removed-pages.ts";

/** The helper returns after this many faults so the loop notices close() and a hung-up peer promptly. */
export const MAX_FAULTS_PER_CALL = 4096;
/** Messages one read of the userfaultfd takes at most; the event buffer must hold this many. */
export const MAX_EVENTS = 64;
const EXTENTS_PER_CALL = 4096;
/** The helper's stats: copied, present, bytes, trace length, write-protect faults, removes (int64 each). */
const STATS_SIZE = 48;
/** Per region: base, size, page size, memory-file offset, first bit in the removed-page map. */
const REGION_SIZE = 40;
/** The prefetch cursor (range, byte in it) and its stats (copied, present, skipped), int64 each. */
const PREFETCH_STATE_SIZE = 40;

export interface BatchServer {
  /** Serves faults; the number of messages JS must look at, 0 for time or budget, or -errno. */
  serveBatch(uffd: number, events: number, maxEvents: number, spinNs: number): number;
  /**
   * Per message of the last batch: 0 copied, 1 already present, 2 for JS, 3 write-protection cleared,
   * 4 REMOVE applied (to the removed-page map), or -errno.
   */
  status(index: number): number;
  /** Faults served and REMOVEs applied by the helper since the last call, then zeroes them. */
  takeStats(): { copied: number; present: number; bytes: number; writeProtect: number; removes: number };
  /**
   * Copies up to `maxPages` more pages of the working set: 0 when it is done, 1 when the budget ran
   * out, -EAGAIN when a REMOVE is pending (read the events first), or another -errno.
   */
  prefetchSlice(uffd: number, maxPages: number): number;
  /** Working-set pages copied, found present and skipped since the last call, then zeroes them. */
  takePrefetchStats(): { copied: number; present: number; skipped: number };
}

export interface NativeHelperBinding {
  /** A sparse file's data extents, one ffi call per 4096 of them instead of two per extent. */
  listExtents(fd: number, size: number): ByteExtent[];
  /**
   * Lays out the regions, layers and statuses the batch loop reads; `removed` is shared with the JS
   * loop (the helper marks the REMOVEs it reads there). With `dirty` (the server's shared map, one byte
   * per memory-file page) the helper tracks dirty pages into it.
   */
  batchServer(
    regions: GuestRegion[],
    layers: Layers,
    removed: RemovedPages,
    recordTrace: (offset: number) => void,
    dirty?: Uint8Array,
    workingSet?: readonly ByteExtent[],
  ): BatchServer;
}

const librariesByPath = new Map<string, string>();

/**
 * The ffi-rs library name of the helper at `path`, opened and ABI-checked once per thread. Each path
 * gets a name of its own: ffi-rs ignores a second open() of a name, so a shared name would keep
 * calling whichever helper was opened first.
 */
export function helperLibrary(path: string): string {
  const known = librariesByPath.get(path);
  if (known) return known;
  const library = `sbx-uffd-helper:${path}`;
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
      `native helper ${path} has ABI ${abi}, this version needs ${NATIVE_HELPER_ABI}: rebuild it (pnpm --filter @sbx/uffd build:native)`,
    );
  librariesByPath.set(path, library);
  return library;
}

const { I32, I64 } = DataType;
/** The helper's functions and their parameters (native/uffd-batch.c); each returns a long. */
const HELPER_FUNCTIONS = {
  // (uffd, msgs, max_msgs, regions, nregions, layer_addrs, layer_of_page, removed, removed_bits, status,
  //  spin_ns, stats, max_faults, trace, trace_cap, dirty, dirty_pages)
  sbx_uffd_serve_batch: [I32, ...new Array<DataType>(16).fill(I64)],
  // (uffd, regions, nregions, layer_addrs, layer_of_page, removed, removed_bits, ranges, nranges, cursor,
  //  max_pages, stats, mode)
  sbx_uffd_prefetch: [I32, ...new Array<DataType>(12).fill(I64)],
  // (fd, start, size, out, cap)
  sbx_data_extents: [I32, I64, I64, I64, I64],
  // (fd, base, ranges, count)
  sbx_pwrite_ranges: [I32, I64, I64, I64],
} as const satisfies Record<string, readonly DataType[]>;

/** A reusable ffi-rs call description for one helper function: callers fill `paramsValue` per call. */
export function helperCall(library: string, funcName: keyof typeof HELPER_FUNCTIONS) {
  const paramsType = HELPER_FUNCTIONS[funcName];
  return {
    library,
    funcName,
    retType: I64,
    paramsType: [...paramsType],
    paramsValue: new Array<number>(paramsType.length).fill(0),
  };
}

const preparedPaths = new Set<string>();

/**
 * Opens the helper on the main thread and resolves each of its functions there, with calls that do
 * nothing (fd -1 and zero counts), before any worker uses it. ffi-rs keeps its libraries and symbols
 * in one process-wide map without a lock: the first open of a library or the first call of a function
 * inserts into it, and an insert while a worker thread looks something up is a data race. After this,
 * workers only read. Once per path.
 */
export function prepareNativeHelper(path: string): void {
  if (preparedPaths.has(path)) return;
  const library = helperLibrary(path);
  for (const funcName of Object.keys(HELPER_FUNCTIONS) as (keyof typeof HELPER_FUNCTIONS)[]) {
    const call = helperCall(library, funcName);
    call.paramsValue[0] = -1;
    load(call as never);
  }
  preparedPaths.add(path);
}

/**
 * The helper for `choice` ("auto", "off" or a path), opened and prepared on this thread (the main one),
 * or undefined for pure ffi. A helper asked for by path or SBX_UFFD_NATIVE_HELPER must work; a stale
 * bundled one (a checkout not rebuilt since the helper changed) means pure ffi, reported to `warn`.
 */
export function readyNativeHelper(
  choice: string,
  arch: Arch,
  warn: (message: string) => void,
): string | undefined {
  const path = resolveNativeHelper(choice, arch);
  if (path === undefined) return undefined;
  if (!existsSync(path)) throw new UffdError("INVALID_OPTIONS", `the native helper ${path} does not exist`);
  try {
    prepareNativeHelper(path);
    return path;
  } catch (error) {
    if (choice !== "auto" || process.env.SBX_UFFD_NATIVE_HELPER) throw error;
    warn(`${(error as Error).message}; using pure ffi`);
    return undefined;
  }
}

/** Opens the helper and checks its ABI; native memory it allocates is freed by `cleanups`. */
export function openNativeHelper(path: string, cleanups: (() => void)[]): NativeHelperBinding {
  const library = helperLibrary(path);
  const extentsOut = new NativeMemory(EXTENTS_PER_CALL * 16);
  cleanups.push(() => extentsOut.free());
  const extentsParams = helperCall(library, "sbx_data_extents");
  extentsParams.paramsValue[3] = extentsOut.address;
  extentsParams.paramsValue[4] = EXTENTS_PER_CALL;
  const listExtents = (fd: number, size: number): ByteExtent[] => {
    const extents: ByteExtent[] = [];
    let position = 0;
    for (;;) {
      extentsParams.paramsValue[0] = fd;
      extentsParams.paramsValue[1] = position;
      extentsParams.paramsValue[2] = size;
      const count = load(extentsParams as never) as unknown as number;
      if (count < 0)
        throw new UffdError("SYSCALL_FAILED", `lseek(SEEK_DATA/SEEK_HOLE) failed: errno ${-count}`, {
          errno: -count,
          syscall: "lseek",
        });
      for (let i = 0; i < count; i++)
        extents.push({ offset: extentsOut.u64(i * 16), length: extentsOut.u64(i * 16 + 8) });
      if (count < EXTENTS_PER_CALL) return extents;
      const last = extents.at(-1) as ByteExtent;
      position = last.offset + last.length;
    }
  };

  const batchServer = (
    regions: GuestRegion[],
    layers: Layers,
    removed: RemovedPages,
    recordTrace: (offset: number) => void,
    dirty?: Uint8Array,
    workingSet: readonly ByteExtent[] = [],
  ): BatchServer => {
    const memory = new NativeMemory(
      regions.length * REGION_SIZE +
        layers.addresses.length * 8 +
        MAX_EVENTS * 8 +
        STATS_SIZE +
        MAX_FAULTS_PER_CALL * 8 +
        PREFETCH_STATE_SIZE +
        workingSet.length * 16,
    );
    cleanups.push(() => memory.free());
    const regionsAt = 0;
    const layersAt = regions.length * REGION_SIZE;
    const statusAt = layersAt + layers.addresses.length * 8;
    const statsAt = statusAt + MAX_EVENTS * 8;
    const traceAt = statsAt + STATS_SIZE;
    const prefetchAt = traceAt + MAX_FAULTS_PER_CALL * 8;
    const rangesAt = prefetchAt + PREFETCH_STATE_SIZE;
    workingSet.forEach((range, i) => {
      memory.setU64(rangesAt + i * 16, range.offset);
      memory.setU64(rangesAt + i * 16 + 8, range.length);
    });
    regions.forEach((region, i) => {
      memory.setU64(regionsAt + i * REGION_SIZE, region.base);
      memory.setU64(regionsAt + i * REGION_SIZE + 8, region.size);
      memory.setU64(regionsAt + i * REGION_SIZE + 16, region.pageSize);
      memory.setU64(regionsAt + i * REGION_SIZE + 24, region.offset);
      memory.setU64(regionsAt + i * REGION_SIZE + 32, removed.firstBitOf(i));
    });
    layers.addresses.forEach((address, i) => {
      memory.setU64(layersAt + i * 8, address);
    });
    const params = helperCall(library, "sbx_uffd_serve_batch");
    // Fixed for the server's life; uffd, msgs, max_msgs and spin_ns are set per call.
    params.paramsValue = [
      0,
      0,
      0,
      memory.address + regionsAt,
      regions.length,
      memory.address + layersAt,
      layers.layerOfPage,
      removed.address,
      removed.bits,
      memory.address + statusAt,
      0,
      memory.address + statsAt,
      MAX_FAULTS_PER_CALL,
      memory.address + traceAt,
      MAX_FAULTS_PER_CALL,
      dirty ? addressOf(dirty) : 0,
      dirty?.length ?? 0,
    ];
    const prefetchParams = helperCall(library, "sbx_uffd_prefetch");
    // Cursor (2 x int64) then stats (3 x int64) at prefetchAt; uffd and max_pages are set per call.
    prefetchParams.paramsValue = [
      0,
      memory.address + regionsAt,
      regions.length,
      memory.address + layersAt,
      layers.layerOfPage,
      removed.address,
      removed.bits,
      memory.address + rangesAt,
      workingSet.length,
      memory.address + prefetchAt,
      0,
      memory.address + prefetchAt + 16,
      dirty ? UFFDIO_COPY_MODE_WP : 0,
    ];
    return {
      prefetchSlice(uffd, maxPages) {
        prefetchParams.paramsValue[0] = uffd;
        prefetchParams.paramsValue[10] = maxPages;
        return load(prefetchParams as never) as unknown as number;
      },
      takePrefetchStats() {
        const stats = {
          copied: memory.u64(prefetchAt + 16),
          present: memory.u64(prefetchAt + 24),
          skipped: memory.u64(prefetchAt + 32),
        };
        memory.bytes.fill(0, prefetchAt + 16, prefetchAt + PREFETCH_STATE_SIZE);
        return stats;
      },
      serveBatch(uffd, events, maxEvents, spinNs) {
        params.paramsValue[0] = uffd;
        params.paramsValue[1] = events;
        params.paramsValue[2] = maxEvents;
        params.paramsValue[10] = spinNs;
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
          writeProtect: memory.u64(statsAt + 32),
          removes: memory.u64(statsAt + 40),
        };
        const traced = memory.u64(statsAt + 24);
        for (let i = 0; i < traced; i++) recordTrace(memory.u64(traceAt + i * 8));
        memory.bytes.fill(0, statsAt, statsAt + STATS_SIZE);
        return stats;
      },
    };
  };
  return { listExtents, batchServer };
}
