// The host's chunk cache: one directory shared by every sandbox and process of the host.
//
//   {dir}/chunks/{sha256}    a chunk's uncompressed bytes, named by their digest (so builds and hosts
//                            that share a chunk share its entry); mtime is its last use, for LRU
//   {dir}/locks/{sha256}     O_EXCL lock held by the one process fetching that chunk (holds its pid)
//   {dir}/tmp/.{sha256}.tmp-{pid}-*   a fetch being written; renamed into chunks/ once verified (writeFileAtomic)
//
// A chunk is checked against its sha256 when fetched and the first time each process uses it; a
// corrupt entry is removed and fetched again. Nothing half-written is ever visible under chunks/: a
// fetch that fails removes its temp file and lock, and a process that died mid-fetch leaves a lock
// and a temp file whose pid is dead, which the next process to need them removes.
import { createHash } from "node:crypto";
import { mkdir, open, readdir, readFile, rm, stat, utimes } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { type Logger, silentLogger } from "@sbx/arch";
import { processAlive, tempNameOwner, writeFileAtomic } from "./atomic-file.ts";
import { StoreError } from "./errors.ts";

/** Where the host's chunk cache lives and how large it may grow. */
export interface ChunkCacheOptions {
  directory: string;
  /** Size limit of chunks/; the least recently used chunks are removed past it. */
  maxBytes: number;
  /** How long to wait for another process's fetch of the same chunk before taking over; default 60 s. */
  lockWaitMs?: number;
  logger?: Logger;
}

/** What the chunk cache holds and did, as this process counted it. */
export interface ChunkCacheStats {
  directory: string;
  maxBytes: number;
  /** Bytes in chunks/ as this process last counted them. */
  bytes: number;
  hits: number;
  misses: number;
  /** Bytes handed to the cache by fetches (uncompressed). */
  fetchedBytes: number;
  evicted: number;
  /** Entries that failed their checksum and were removed. */
  corruptDropped: number;
}

/** Fetches a chunk's uncompressed bytes; the cache checks them. */
export type ChunkFetcher = (signal: AbortSignal | undefined) => Promise<Buffer>;

const DIGEST = /^[0-9a-f]{64}$/;

/** The host's chunk cache: verified chunks by sha256, shared by every process, LRU past its size limit. */
export class ChunkCache implements AsyncDisposable {
  readonly directory: string;
  readonly maxBytes: number;
  readonly #lockWaitMs: number;
  readonly #logger: Logger;
  readonly #inflight = new Map<string, Promise<string>>();
  /** Digests this process has checked, by inode: a replaced file is checked again. */
  readonly #verified = new Map<string, number>();
  /** Chunks this process is reading; eviction leaves them. */
  readonly #pinned = new Map<string, number>();
  #bytes = 0;
  #closed = false;
  readonly #stats = { hits: 0, misses: 0, fetchedBytes: 0, evicted: 0, corruptDropped: 0 };

  private constructor(options: ChunkCacheOptions) {
    this.directory = options.directory;
    this.maxBytes = options.maxBytes;
    this.#lockWaitMs = options.lockWaitMs ?? 60_000;
    this.#logger = options.logger ?? silentLogger;
  }

  static async open(options: ChunkCacheOptions): Promise<ChunkCache> {
    if (!Number.isSafeInteger(options.maxBytes) || options.maxBytes <= 0)
      throw new StoreError(
        "CONFIG_INVALID",
        `chunk cache size ${options.maxBytes} is not a positive byte count`,
      );
    const cache = new ChunkCache(options);
    for (const sub of ["chunks", "locks", "tmp"])
      await mkdir(join(options.directory, sub), { recursive: true, mode: 0o700 });
    await cache.#removeDeadLeftovers();
    cache.#bytes = (await cache.#entries()).reduce((sum, entry) => sum + entry.size, 0);
    return cache;
  }

  #chunkPath(digest: string): string {
    if (!DIGEST.test(digest))
      throw new StoreError("CHUNK_CORRUPT", `${JSON.stringify(digest)} is not a sha256`);
    return join(this.directory, "chunks", digest);
  }

  /** Where a verified chunk is, if cached (no fetch, no LRU touch). */
  async has(digest: string): Promise<boolean> {
    return stat(this.#chunkPath(digest)).then(
      () => true,
      () => false,
    );
  }

  /**
   * The path of the chunk with this digest and length, fetched with `fetch` on a miss. Concurrent
   * calls for one chunk, in this process or another, fetch it once. Throws CHUNK_CORRUPT when the
   * fetched bytes do not match (nothing is cached then).
   */
  async ensure(digest: string, length: number, fetch: ChunkFetcher, signal?: AbortSignal): Promise<string> {
    if (this.#closed) throw new StoreError("CLOSED", `chunk cache ${this.directory} is closed`);
    const path = this.#chunkPath(digest);
    const running = this.#inflight.get(digest);
    if (running) return running;
    const work = this.#ensure(digest, path, length, fetch, signal).finally(() =>
      this.#inflight.delete(digest),
    );
    this.#inflight.set(digest, work);
    return work;
  }

  /** Reads `length` bytes at `offset` of a chunk, ensuring it first; a chunk evicted meanwhile is fetched again. */
  async read(
    digest: string,
    chunkLength: number,
    fetch: ChunkFetcher,
    offset: number,
    length: number,
    signal?: AbortSignal,
  ): Promise<Buffer> {
    if (offset < 0 || length < 0 || offset + length > chunkLength)
      throw new StoreError("RANGE_INVALID", `${offset}+${length} is outside a chunk of ${chunkLength} bytes`);
    this.#pinned.set(digest, (this.#pinned.get(digest) ?? 0) + 1);
    try {
      for (let attempt = 0; ; attempt++) {
        const path = await this.ensure(digest, chunkLength, fetch, signal);
        let handle: import("node:fs/promises").FileHandle;
        try {
          handle = await open(path, "r");
        } catch (error) {
          // Another process evicted it between ensure and open.
          if ((error as NodeJS.ErrnoException).code === "ENOENT" && attempt < 3) continue;
          throw error;
        }
        try {
          const buffer = Buffer.alloc(length);
          const { bytesRead } = await handle.read(buffer, 0, length, offset);
          if (bytesRead !== length) throw new StoreError("CHUNK_CORRUPT", `cached chunk ${digest} is short`);
          return buffer;
        } finally {
          await handle.close();
        }
      }
    } finally {
      const left = (this.#pinned.get(digest) ?? 1) - 1;
      if (left === 0) this.#pinned.delete(digest);
      else this.#pinned.set(digest, left);
    }
  }

  async #ensure(
    digest: string,
    path: string,
    length: number,
    fetch: ChunkFetcher,
    signal: AbortSignal | undefined,
  ): Promise<string> {
    const lockPath = join(this.directory, "locks", digest);
    const waitUntil = Date.now() + this.#lockWaitMs;
    for (;;) {
      if (signal?.aborted)
        throw new StoreError("ABORTED", `fetching chunk ${digest} was aborted`, { cause: signal.reason });
      if (await this.#useCached(digest, path, length)) return path;
      let lock: import("node:fs/promises").FileHandle;
      try {
        lock = await open(lockPath, "wx", 0o600);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
        const owner = Number((await readFile(lockPath, "utf8").catch(() => "")).trim());
        // A lock whose writer died (or that is still empty after the wait) is taken over.
        if ((Number.isInteger(owner) && owner > 0 && !processAlive(owner)) || Date.now() > waitUntil)
          await rm(lockPath, { force: true });
        else await sleep(10, undefined, { signal }).catch(() => undefined);
        continue;
      }
      try {
        await lock.writeFile(String(process.pid));
        // Another process may have finished between our check and our lock.
        if (await this.#useCached(digest, path, length)) return path;
        await this.#fetchInto(digest, path, length, fetch, signal);
        return path;
      } finally {
        await lock.close();
        await rm(lockPath, { force: true });
      }
    }
  }

  /** True when the chunk is cached and good; a corrupt entry is removed and false returned. */
  async #useCached(digest: string, path: string, length: number): Promise<boolean> {
    let info: import("node:fs").Stats;
    try {
      info = await stat(path);
    } catch {
      return false;
    }
    if (this.#verified.get(digest) !== info.ino) {
      const bytes = await readFile(path).catch(() => undefined);
      if (!bytes || bytes.length !== length || createHash("sha256").update(bytes).digest("hex") !== digest) {
        this.#logger.warn?.({ chunk: digest, path }, "cached chunk fails its checksum; removed");
        await rm(path, { force: true });
        this.#stats.corruptDropped++;
        this.#verified.delete(digest);
        return false;
      }
      this.#verified.set(digest, info.ino);
    }
    const now = new Date();
    await utimes(path, now, now).catch(() => undefined);
    this.#stats.hits++;
    return true;
  }

  async #fetchInto(
    digest: string,
    path: string,
    length: number,
    fetch: ChunkFetcher,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const bytes = await fetch(signal);
    if (bytes.length !== length || createHash("sha256").update(bytes).digest("hex") !== digest)
      throw new StoreError(
        "CHUNK_CORRUPT",
        `chunk ${digest} from the store fails its checksum (${bytes.length} bytes, ${length} expected); not cached`,
      );
    await writeFileAtomic(path, bytes, { tempDirectory: join(this.directory, "tmp") });
    const info = await stat(path);
    this.#verified.set(digest, info.ino);
    this.#stats.misses++;
    this.#stats.fetchedBytes += length;
    this.#bytes += length;
    if (this.#bytes > this.maxBytes) await this.evict(digest);
  }

  async #entries(): Promise<{ digest: string; size: number; mtimeMs: number }[]> {
    const dir = join(this.directory, "chunks");
    const entries: { digest: string; size: number; mtimeMs: number }[] = [];
    for (const name of await readdir(dir)) {
      if (!DIGEST.test(name)) continue;
      const info = await stat(join(dir, name)).catch(() => undefined);
      if (info?.isFile()) entries.push({ digest: name, size: info.size, mtimeMs: info.mtimeMs });
    }
    return entries;
  }

  /**
   * Recounts chunks/ (other processes add to it too) and removes the least recently used chunks until
   * it fits `maxBytes`, never one this process is reading or `keep`.
   */
  async evict(keep?: string): Promise<void> {
    const entries = (await this.#entries()).sort((a, b) => a.mtimeMs - b.mtimeMs);
    let total = entries.reduce((sum, entry) => sum + entry.size, 0);
    for (const entry of entries) {
      if (total <= this.maxBytes) break;
      if (entry.digest === keep || this.#pinned.has(entry.digest) || this.#inflight.has(entry.digest))
        continue;
      await rm(join(this.directory, "chunks", entry.digest), { force: true });
      this.#verified.delete(entry.digest);
      total -= entry.size;
      this.#stats.evicted++;
    }
    this.#bytes = total;
  }

  async #removeDeadLeftovers(): Promise<void> {
    const tmp = join(this.directory, "tmp");
    for (const name of await readdir(tmp)) {
      const owner = tempNameOwner(name);
      if (owner === undefined || !processAlive(owner)) await rm(join(tmp, name), { force: true });
    }
    const locks = join(this.directory, "locks");
    for (const name of await readdir(locks)) {
      const owner = Number((await readFile(join(locks, name), "utf8").catch(() => "")).trim());
      if (Number.isInteger(owner) && owner > 0 && !processAlive(owner))
        await rm(join(locks, name), { force: true });
    }
  }

  stats(): ChunkCacheStats {
    return { directory: this.directory, maxBytes: this.maxBytes, bytes: this.#bytes, ...this.#stats };
  }

  /** Waits for this process's fetches to settle; the cache's files stay for the next user. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.#closed = true;
    await Promise.allSettled([...this.#inflight.values()]);
  }
}
