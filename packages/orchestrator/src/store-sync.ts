// Builds that move between hosts: a published build goes up to the store (@sbx/store) in the
// background, and a build a create needs that is not on this host, or any build its memory header
// serves pages from, comes down before anything starts. Memory comes as a sparse file of the chunks
// that hold owned pages (a build owns a small part of its memory after a pause); Firecracker then
// restores from local files exactly as for a build made here.
import { access } from "node:fs/promises";
import { join } from "node:path";
import { type BuildStore, downloadBuild, StoreError, uploadBuild } from "@sbx/store";
import { ownedRanges } from "@sbx/uffd";
import { buildDir, readBuild, readBuildHeader } from "./builds.ts";
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
 */
export async function ensureLocalBuild(
  state: OrchestratorState,
  store: BuildStore | undefined,
  id: string,
): Promise<void> {
  // Without a store there is nothing to fetch: the create reads the build and its header itself.
  if (!store) return;
  await ensureOne(state, store, id);
  const header = await readBuildHeader(state.config, id);
  await Promise.all(
    header.builds.filter((build) => build !== id).map((build) => ensureOne(state, store, build)),
  );
}

async function ensureOne(state: OrchestratorState, store: BuildStore, id: string): Promise<void> {
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
        await downloadBuild({ store, build: id, directory: buildDir(state.config, id), memory: "file" });
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
