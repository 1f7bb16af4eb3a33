// Bringing a build from the store into a local build directory, in the layout the orchestrator uses:
// build.json, vmstate, memory.header and the other small files whole, rootfs.ext4 in parallel
// verified chunks, and the memory either left in the store (lazy: its chunk table is saved as
// memory.chunks.json and RemoteMemory reads it through the chunk cache) or written as a sparse file.
// Everything lands in `.staging-{id}` beside the target first and is renamed into place with
// build.json written last, so a crash or a dead store leaves no half build under the target name.
import { createHash } from "node:crypto";
import { mkdir, open, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { sha256File } from "@sbx/arch";
import { z } from "zod";
import { syncDirectory, writeFileAtomic } from "./atomic-file.ts";
import type { BuildStore } from "./build-store.ts";
import type { ChunkTable } from "./chunk-table.ts";
import { forEachLimit } from "./concurrency.ts";
import { StoreError } from "./errors.ts";
import { type FetchCounter, fetchChunk, fetchChunkTable } from "./fetch-chunk.ts";
import {
  buildFileKey,
  CHUNKED_FILES,
  STORED_BUILD_FILES,
  type StoredManifest,
  storedManifestSchema,
} from "./layout.ts";

/** The file a lazy download leaves in the build directory instead of the memory: its chunk table. */
export const MEMORY_CHUNK_TABLE_FILE = "memory.chunks.json";

/** What downloadBuild fetches, from where, into which directory. */
export interface DownloadBuildOptions {
  store: BuildStore;
  build: string;
  /** The local build directory to create, e.g. `{stateDir}/builds/{id}`; must not exist yet. */
  directory: string;
  /** "lazy" (default): memory stays in the store; "file": a sparse memory file with every stored chunk. */
  memory?: "lazy" | "file";
  /** Parallel chunk fetches; default 4. */
  concurrency?: number;
  signal?: AbortSignal;
}

/** What downloadBuild brought down and what it took from the store. */
export interface DownloadReport {
  manifest: StoredManifest;
  directory: string;
  /** The memory chunk table (saved as memory.chunks.json); hand it to RemoteMemory.addChunkTable. */
  memoryChunks: ChunkTable | undefined;
  fetched: FetchCounter;
}

/** Reads and checks build.json of a stored build; NOT_FOUND when the build is not (yet) in the store. */
export async function fetchBuildManifest(
  store: BuildStore,
  build: string,
  signal?: AbortSignal,
): Promise<StoredManifest> {
  const key = buildFileKey(build, STORED_BUILD_FILES.manifest);
  const bytes = await store.get(key, { signal, maxBytes: 1024 * 1024 });
  let parsed: ReturnType<typeof storedManifestSchema.safeParse>;
  try {
    parsed = storedManifestSchema.safeParse(JSON.parse(bytes.toString("utf8")));
  } catch (cause) {
    throw new StoreError("BUILD_INVALID", `${key} is not JSON`, { key, cause });
  }
  if (!parsed.success)
    throw new StoreError("BUILD_INVALID", `${key}: ${z.prettifyError(parsed.error)}`, { key });
  if (parsed.data.id !== build)
    throw new StoreError("BUILD_INVALID", `${key} names build ${parsed.data.id}`, { key });
  return parsed.data;
}

/** Brings a stored build into a new local build directory, verified, with build.json written last. */
export async function downloadBuild(options: DownloadBuildOptions): Promise<DownloadReport> {
  const { store, build, directory, signal } = options;
  const concurrency = options.concurrency ?? 4;
  const fetched: FetchCounter = { requests: 0, storedBytes: 0 };
  if (
    await stat(directory).then(
      () => true,
      () => false,
    )
  )
    throw new StoreError("LOCAL_BUILD_EXISTS", `${directory} exists: build ${build} is already on this host`);
  const manifest = await fetchBuildManifest(store, build, signal);
  fetched.requests++;
  const staging = join(dirname(directory), `.staging-${basename(directory)}`);
  await mkdir(dirname(directory), { recursive: true, mode: 0o700 });
  // A staging directory left by a crashed download of the same build is not worth resuming.
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { mode: 0o700 });
  let memoryChunks: ChunkTable | undefined;
  try {
    for (const [name, record] of Object.entries(manifest.files)) {
      if (!record || CHUNKED_FILES.includes(name)) continue;
      const key = buildFileKey(build, name);
      const bytes = await store.get(key, { signal, maxBytes: record.sizeBytes });
      fetched.requests++;
      fetched.storedBytes += bytes.length;
      if (
        bytes.length !== record.sizeBytes ||
        createHash("sha256").update(bytes).digest("hex") !== record.sha256
      )
        throw new StoreError("BUILD_INVALID", `${key} does not match its size and sha256 in build.json`, {
          key,
        });
      await writeFile(join(staging, name), bytes, { mode: 0o600 });
    }
    const rootfs = manifest.files[STORED_BUILD_FILES.rootfs];
    if (rootfs) {
      const table = await fetchChunkTable(store, build, STORED_BUILD_FILES.rootfs, signal);
      fetched.requests++;
      await writeChunkedFile(
        store,
        build,
        table,
        join(staging, STORED_BUILD_FILES.rootfs),
        concurrency,
        fetched,
        signal,
      );
      if ((await sha256File(join(staging, STORED_BUILD_FILES.rootfs))) !== rootfs.sha256)
        throw new StoreError(
          "BUILD_INVALID",
          `${build}/rootfs.ext4 from its chunks does not match build.json's sha256`,
        );
    }
    if (manifest.files[STORED_BUILD_FILES.memory]) {
      memoryChunks = await fetchChunkTable(store, build, STORED_BUILD_FILES.memory, signal);
      fetched.requests++;
      await writeFile(join(staging, MEMORY_CHUNK_TABLE_FILE), JSON.stringify(memoryChunks), { mode: 0o600 });
      if (options.memory === "file")
        await writeChunkedFile(
          store,
          build,
          memoryChunks,
          join(staging, STORED_BUILD_FILES.memory),
          concurrency,
          fetched,
          signal,
        );
    }
    await syncFiles(staging);
    await writeFileAtomic(join(staging, STORED_BUILD_FILES.manifest), (handle) =>
      handle.writeFile(`${JSON.stringify(manifest, null, 2)}\n`),
    );
    await rename(staging, directory);
    await syncDirectory(dirname(directory));
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    throw error;
  }
  return { manifest, directory, memoryChunks, fetched };
}

async function syncFiles(dir: string): Promise<void> {
  for (const name of await readdir(dir)) {
    const handle = await open(join(dir, name), "r");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }
}

/** Writes every chunk the table stores at its offset of a file of the table's size (holes elsewhere). */
async function writeChunkedFile(
  store: BuildStore,
  build: string,
  table: ChunkTable,
  path: string,
  concurrency: number,
  counter: FetchCounter,
  signal: AbortSignal | undefined,
): Promise<void> {
  const handle = await open(path, "wx", 0o600);
  try {
    await handle.truncate(table.sizeBytes);
    await forEachLimit(
      table.chunks.filter((chunk) => !chunk.zero),
      concurrency,
      async (chunk, chunkSignal) => {
        const bytes = await fetchChunk(store, build, table, chunk, chunkSignal, counter);
        if (createHash("sha256").update(bytes).digest("hex") !== chunk.sha256)
          throw new StoreError(
            "CHUNK_CORRUPT",
            `chunk ${chunk.index} of ${build}/${table.file} fails its sha256`,
          );
        await handle.write(bytes, 0, bytes.length, chunk.offset);
      },
      signal,
    );
  } finally {
    await handle.close();
  }
}
