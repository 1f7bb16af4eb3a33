// Memory of builds that live in the store, read chunk by chunk through the host's chunk cache: what
// the page-fault server's memory source calls when a guest touches a page whose chunk is not local.
import type { BuildStore } from "./build-store.ts";
import type { ChunkCache } from "./chunk-cache.ts";
import { type ChunkEntry, type ChunkTable, findChunk } from "./chunk-table.ts";
import { StoreError } from "./errors.ts";
import { type FetchCounter, fetchChunk, fetchChunkTable } from "./fetch-chunk.ts";
import { STORED_BUILD_FILES, storedBuildIdSchema } from "./layout.ts";

/** The store and the host's chunk cache a RemoteMemory reads through. */
export interface RemoteMemoryOptions {
  store: BuildStore;
  cache: ChunkCache;
}

/** A chunk ready in the cache: its bytes are `length` bytes of `path`, guest offset `offset` onwards. */
export interface LocalChunk {
  path: string;
  offset: number;
  length: number;
  sha256: string;
}

/** Stored builds' memory, chunk by chunk, through the host's chunk cache. */
export class RemoteMemory {
  readonly #store: BuildStore;
  readonly #cache: ChunkCache;
  readonly #tables = new Map<string, Promise<ChunkTable>>();
  /** What this reader took from the store. */
  readonly fetched: FetchCounter = { requests: 0, storedBytes: 0 };

  constructor(options: RemoteMemoryOptions) {
    this.#store = options.store;
    this.#cache = options.cache;
  }

  /** The chunk cache's counters. */
  cacheStats(): ReturnType<ChunkCache["stats"]> {
    return this.#cache.stats();
  }

  /**
   * Gives a build's memory chunk table without asking the store (e.g. the `memory.chunks.json` that
   * downloadBuild wrote into the local build directory).
   */
  addChunkTable(build: string, table: ChunkTable): void {
    this.#tables.set(storedBuildIdSchema.parse(build), Promise.resolve(table));
  }

  /** The memory chunk table of a build, fetched once per reader. */
  chunkTable(build: string, signal?: AbortSignal): Promise<ChunkTable> {
    storedBuildIdSchema.parse(build);
    let table = this.#tables.get(build);
    if (!table) {
      table = fetchChunkTable(this.#store, build, STORED_BUILD_FILES.memory, signal);
      this.#tables.set(build, table);
      table.catch(() => this.#tables.delete(build));
    }
    return table;
  }

  #entry(table: ChunkTable, build: string, index: number): ChunkEntry {
    const entry = findChunk(table, index);
    if (!entry)
      throw new StoreError(
        "RANGE_NOT_STORED",
        `build ${build} stores no memory at ${index * table.chunkSize}: its header gives those pages to another build`,
      );
    return entry;
  }

  #fetcher(build: string, table: ChunkTable, entry: ChunkEntry) {
    return (signal: AbortSignal | undefined) =>
      fetchChunk(this.#store, build, table, entry, signal, this.fetched);
  }

  /** Makes the chunk holding guest offset `offset` local (fetching it on a miss) and says where it is. */
  async ensureChunk(build: string, offset: number, signal?: AbortSignal): Promise<LocalChunk> {
    const table = await this.chunkTable(build, signal);
    const entry = this.#entry(table, build, Math.floor(offset / table.chunkSize));
    const path = await this.#cache.ensure(
      entry.sha256,
      entry.length,
      this.#fetcher(build, table, entry),
      signal,
    );
    return { path, offset: entry.offset, length: entry.length, sha256: entry.sha256 };
  }

  /** `length` bytes of a build's memory at guest offset `offset`, from as many chunks as it spans. */
  async readMemoryRange(
    build: string,
    offset: number,
    length: number,
    signal?: AbortSignal,
  ): Promise<Buffer> {
    const table = await this.chunkTable(build, signal);
    if (
      !Number.isSafeInteger(offset) ||
      !Number.isSafeInteger(length) ||
      offset < 0 ||
      length < 0 ||
      offset + length > table.sizeBytes
    )
      throw new StoreError(
        "RANGE_INVALID",
        `${offset}+${length} is outside build ${build}'s ${table.sizeBytes} bytes of memory`,
      );
    const out = Buffer.alloc(length);
    const first = Math.floor(offset / table.chunkSize);
    const last = length === 0 ? first - 1 : Math.floor((offset + length - 1) / table.chunkSize);
    const parts: Promise<void>[] = [];
    for (let index = first; index <= last; index++) {
      const entry = this.#entry(table, build, index);
      const start = Math.max(offset, entry.offset);
      const end = Math.min(offset + length, entry.offset + entry.length);
      parts.push(
        entry.zero
          ? Promise.resolve()
          : this.#cache
              .read(
                entry.sha256,
                entry.length,
                this.#fetcher(build, table, entry),
                start - entry.offset,
                end - start,
                signal,
              )
              .then((bytes) => {
                bytes.copy(out, start - offset);
              }),
      );
    }
    await Promise.all(parts);
    return out;
  }
}
