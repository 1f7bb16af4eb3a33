// Builds that move between hosts: a published build goes up to the store (@sbx/store) in the
// background, and a build a create needs that is not on this host, or any build its memory header
// serves pages from, comes down before anything starts: build.json, header, vmstate and the rootfs
// whole. Memory stays in the store (lazy, with a chunk cache): the page-fault server asks for a chunk
// when the guest or the working set first needs one, through the host's chunk cache, and serves other
// faults meanwhile. Without a chunk cache it comes down as a sparse file of the chunks that hold owned
// pages, and Firecracker restores from local files exactly as for a build made here.
import { access, readFile } from "node:fs/promises";
import { join } from "node:path";
import {
  type BuildStore,
  downloadBuild,
  findChunk,
  MEMORY_CHUNK_TABLE_FILE,
  parseChunkTable,
  type RemoteMemory,
  StoreError,
  uploadBuild,
} from "@sbx/store";
import { type MemoryHeader, ownedRanges, type RemoteMemorySource } from "@sbx/uffd";
import { buildDir, localMemoryFile, readBuild, readBuildHeader } from "./builds.ts";
import { OrchestratorError } from "./errors.ts";
import type { OrchestratorState } from "./orchestrator-state.ts";
import { BUILD_FILES } from "./template-manifest.ts";

const inFlight = new WeakMap<OrchestratorState, Map<string, Promise<void>>>();

async function isLocal(state: OrchestratorState, id: string): Promise<boolean> {
  return access(join(buildDir(state.config, id), BUILD_FILES.manifest)).then(
    () => true,
    () => false,
  );
}

/** Uploads a local build (build.json last, so the store shows it only once it is complete). */
export async function uploadToStore(state: OrchestratorState, store: BuildStore, id: string): Promise<void> {
  const [manifest, header] = await Promise.all([
    readBuild(state.config, id),
    readBuildHeader(state.config, id),
  ]);
  await uploadBuild({
    store,
    directory: buildDir(state.config, id),
    manifest,
    memoryRanges: ownedRanges(header, id),
  });
}

/**
 * Makes `id` and every build its header names local, fetching what is missing from `store`; one
 * download per build at a time in this process, each under a lease so gc leaves its staging alone.
 * `memory: "lazy"` leaves memory in the store (see memorySourcesOf); "file" brings it down.
 */
export async function ensureLocalBuild(
  state: OrchestratorState,
  store: BuildStore | undefined,
  id: string,
  memory: "lazy" | "file" = "file",
): Promise<void> {
  // Without a store there is nothing to fetch: the create reads the build and its header itself.
  if (!store) return;
  await ensureOne(state, store, id, memory);
  const header = await readBuildHeader(state.config, id);
  await Promise.all(
    header.builds.filter((build) => build !== id).map((build) => ensureOne(state, store, build, memory)),
  );
}

/**
 * Where the page-fault server gets each build's pages: its memory file when it is on this host, else
 * (a build that came down lazily: its memory.chunks.json and no memory file) its chunks through
 * `remote`. A build with neither is BUILD_MISSING naming it, before anything starts.
 */
export async function memorySourcesOf(
  state: OrchestratorState,
  header: MemoryHeader,
  remote: RemoteMemory | undefined,
): Promise<{ paths: Record<string, string>; remote: Record<string, RemoteMemorySource> | undefined }> {
  const paths: Record<string, string> = {};
  const sources: Record<string, RemoteMemorySource> = {};
  for (const id of header.builds) {
    const directory = buildDir(state.config, id);
    const hasFile = await access(join(directory, BUILD_FILES.memory)).then(
      () => true,
      () => false,
    );
    const chunks = hasFile
      ? undefined
      : await readFile(join(directory, MEMORY_CHUNK_TABLE_FILE), "utf8").catch(() => undefined);
    if (chunks === undefined) {
      paths[id] = await localMemoryFile(state.config, id);
      continue;
    }
    if (!remote)
      throw new OrchestratorError(
        "BUILD_MISSING",
        `build ${id} keeps its memory in a build store, and this orchestrator has none: set SBX_STORE_URL (and a chunk cache) to resume it`,
        { details: { build: id } },
      );
    const table = parseChunkTable(JSON.parse(chunks), `${directory}/${MEMORY_CHUNK_TABLE_FILE}`);
    remote.addChunkTable(id, table);
    sources[id] = {
      sizeBytes: table.sizeBytes,
      chunkSize: table.chunkSize,
      async fetchChunk(index, signal) {
        const entry = findChunk(table, index);
        if (entry?.zero) return undefined;
        return (await remote.ensureChunk(id, index * table.chunkSize, signal)).path;
      },
    };
  }
  return { paths, remote: Object.keys(sources).length > 0 ? sources : undefined };
}

async function ensureOne(
  state: OrchestratorState,
  store: BuildStore,
  id: string,
  memory: "lazy" | "file",
): Promise<void> {
  if (await isLocal(state, id)) return;
  let downloads = inFlight.get(state);
  if (!downloads) {
    downloads = new Map();
    inFlight.set(state, downloads);
  }
  let download = downloads.get(id);
  if (!download) {
    const release = state.leases.lease(id);
    download = (async () => {
      try {
        if (await isLocal(state, id)) return;
        await downloadBuild({ store, build: id, directory: buildDir(state.config, id), memory });
      } catch (cause) {
        if (cause instanceof StoreError && cause.code === "NOT_FOUND")
          throw new OrchestratorError(
            "BUILD_NOT_FOUND",
            `build ${id} is neither on this host nor in ${store.description}`,
            {
              cause,
              details: { build: id },
            },
          );
        throw new OrchestratorError(
          "BUILD_MISSING",
          `build ${id} could not be fetched from ${store.description}: ${(cause as Error).message}`,
          {
            cause,
            details: { build: id, code: (cause as { code?: string }).code },
          },
        );
      } finally {
        release();
        downloads?.delete(id);
      }
    })();
    downloads.set(id, download);
  }
  await download;
}
