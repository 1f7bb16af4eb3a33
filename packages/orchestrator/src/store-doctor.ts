// `sbx doctor`'s view of the build store and the host's chunk cache: whether the store is configured
// and answers (a wrong credential names its variable), and what the cache holds against its limit and
// the free space of its file system.
import { readdir, stat, statfs } from "node:fs/promises";
import { join } from "node:path";
import { chunkCacheOptionsFromEnv, storeFromEnv } from "@sbx/store";
import type { OrchestratorConfig } from "./config.ts";
import type { DoctorCheck } from "./doctor.ts";
import { formatBytes } from "./progress.ts";

/** How long the reachability probe may take. */
const PROBE_TIMEOUT_MS = 5_000;

const messageOf = (error: unknown) => (error instanceof Error ? error.message : String(error));

export async function checkBuildStore(
  config: Pick<OrchestratorConfig, "stateDir">,
  env: Record<string, string | undefined>,
): Promise<DoctorCheck[]> {
  let store: ReturnType<typeof storeFromEnv>;
  try {
    store = storeFromEnv(env);
  } catch (error) {
    const variable = (error as { variable?: string }).variable;
    return [
      {
        id: "build-store",
        status: "fail",
        summary: messageOf(error),
        fix: `fix ${variable ?? "SBX_STORE_URL"} (see docs/operations.md, Many hosts)`,
      },
    ];
  }
  if (!store)
    return [
      {
        id: "build-store",
        status: "ok",
        summary: "no build store (SBX_STORE_URL unset): builds stay on this host",
      },
    ];
  const checks: DoctorCheck[] = [];
  try {
    // A key that never exists: an answer at all proves the endpoint, bucket and credentials.
    await store.head("builds/sbx-doctor-probe", { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) });
    checks.push({ id: "build-store", status: "ok", summary: `${store.description} answers` });
  } catch (error) {
    const variable = (error as { variable?: string }).variable;
    checks.push({
      id: "build-store",
      status: "fail",
      summary: `${store.description}: ${messageOf(error)}`,
      fix: variable
        ? `fix ${variable}`
        : "check that the store is reachable from this host (AWS_ENDPOINT_URL, the network, the bucket)",
    });
  } finally {
    await store[Symbol.asyncDispose]();
  }
  checks.push(await checkChunkCache(config, env));
  return checks;
}

async function checkChunkCache(
  config: Pick<OrchestratorConfig, "stateDir">,
  env: Record<string, string | undefined>,
): Promise<DoctorCheck> {
  let options: ReturnType<typeof chunkCacheOptionsFromEnv>;
  try {
    options = chunkCacheOptionsFromEnv({ directory: join(config.stateDir, "chunk-cache") }, env);
  } catch (error) {
    return {
      id: "chunk-cache",
      status: "fail",
      summary: messageOf(error),
      fix: "fix SBX_CHUNK_CACHE_DIR / SBX_CHUNK_CACHE_SIZE",
    };
  }
  const { directory, maxBytes } = options;
  let used = 0;
  let chunks = 0;
  const names = await readdir(join(directory, "chunks")).catch(() => undefined);
  for (const name of names ?? []) {
    const info = await stat(join(directory, "chunks", name)).catch(() => undefined);
    if (!info?.isFile()) continue;
    used += info.size;
    chunks++;
  }
  const leftovers = (await readdir(join(directory, "tmp")).catch(() => [])).length;
  const held = names
    ? `${chunks} chunks, ${formatBytes(used)} of ${formatBytes(maxBytes)}`
    : `empty, limit ${formatBytes(maxBytes)}`;
  // The cache's file system, or the nearest existing parent's (a cache not made yet).
  let free: number | undefined;
  for (let at = directory; free === undefined; at = join(at, "..")) {
    const info = await statfs(at).catch(() => undefined);
    if (info) free = info.bavail * info.bsize;
    if (at === "/") break;
  }
  const summary = `${directory}: ${held}${free === undefined ? "" : `; ${formatBytes(free)} free on its file system`}${leftovers ? `; ${leftovers} temp files of a fetch in progress or a crashed one (removed by the next process to open the cache)` : ""}`;
  if (free !== undefined && maxBytes - used > free)
    return {
      id: "chunk-cache",
      status: "warn",
      summary,
      fix: `lower SBX_CHUNK_CACHE_SIZE to at most ${formatBytes(used + free)} or give ${directory} more space: a full disk fails chunk fetches, and the sandboxes waiting for them`,
    };
  return { id: "chunk-cache", status: "ok", summary };
}
