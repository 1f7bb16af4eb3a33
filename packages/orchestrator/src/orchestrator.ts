// The composition: one state directory, templates built into it as immutable builds, sandboxes started
// from them with the one sandbox lifecycle (sandbox.ts), limits and tracking on top, and gc for the
// builds nothing pins any more.

import { join } from "node:path";
import { type Logger, silentLogger } from "@sbx/arch";
import { type BuildStore, ChunkCache, chunkCacheOptionsFromEnv, RemoteMemory } from "@sbx/store";
import { type ArtifactResolver, defaultArtifactResolver } from "./boot-parameters.ts";
import {
  collectGarbage,
  type GcReport,
  listPausedSandboxes,
  listTemplatePointers,
  type PausedSandbox,
  removePausedSandbox,
  removeTemplatePointer,
  type TemplatePointer,
} from "./builds.ts";
import {
  AdmissionController,
  type CapacitySnapshot,
  demandOf,
  describeCapacity,
  type ResolvedCapacity,
  resolveCapacity,
  takeSlot,
} from "./capacity.ts";
import type { OrchestratorConfig } from "./config.ts";
import { OrchestratorError } from "./errors.ts";
import { launchModeFor } from "./jail-plan.ts";
import { NetworkPool, type NetworkPoolStats } from "./netns-pool.ts";
import { type OrchestratorState, openOrchestratorState } from "./orchestrator-state.ts";
import {
  type CreateSandboxOptions,
  createSandbox,
  newMetrics,
  type OrchestratorMetrics,
  type Sandbox,
} from "./sandbox.ts";
import { uploadToStore } from "./store-sync.ts";
import { type BuildTemplateOptions, type BuiltTemplate, buildTemplate } from "./template-build.ts";

/** Options of `Orchestrator.open`: logger, artifact checks and resolver, build store and chunk cache. */
export interface OpenOrchestratorOptions {
  logger?: Logger;
  /**
   * Resolve and verify every artifact (Firecracker, kernel, busybox, custom CPU template) before
   * anything starts, with the functions the build uses: a missing or mismatched artifact fails here,
   * with the fix, not in the middle of a build. `sbx serve` does this.
   */
  checkArtifacts?: boolean;
  resolver?: ArtifactResolver;
  /**
   * A build store shared by hosts (`storeFromEnv()` from @sbx/store reads SBX_STORE_URL): every build
   * published here is uploaded in the background, and a create of a build that is not here fetches it.
   */
  store?: BuildStore;
  /**
   * With a store: the host's chunk cache, through which builds from the store restore lazily (only
   * the memory chunks the guest touches are fetched). Default: opened at SBX_CHUNK_CACHE_DIR (else
   * `{stateDir}/chunk-cache`), SBX_CHUNK_CACHE_SIZE (default 10 GiB). `false`: a build's memory comes
   * down whole before its first create.
   */
  chunkCache?: ChunkCache | false;
}

export interface OrchestratorMetricsWithCapacity extends OrchestratorMetrics {
  /** Committed vs available vCPUs, memory and sandbox slots, the admission queue and its wait times. */
  capacity: CapacitySnapshot;
}

/**
 * The composition: templates built as immutable builds, sandboxes created from them under limits and
 * capacity-aware admission, tracked and killed on `close()`, and gc for builds nothing pins.
 */
export class Orchestrator implements AsyncDisposable {
  readonly state: OrchestratorState;
  readonly #live = new Set<Sandbox>();
  readonly #logger: Logger;
  readonly #metrics: OrchestratorMetrics = newMetrics();
  readonly #networkPool: NetworkPool | undefined;
  readonly #capacity: AdmissionController;
  /** The host as admission sees it (detected, or the config's overrides) and the limits from it. */
  readonly hostCapacity: ResolvedCapacity;

  readonly #store: BuildStore | undefined;
  readonly #uploads = new Map<string, Promise<void>>();
  /** The store's memory through the chunk cache, and the cache when this orchestrator opened it. */
  readonly #remoteMemory: RemoteMemory | undefined;
  readonly #ownCache: ChunkCache | undefined;

  private constructor(
    state: OrchestratorState,
    logger: Logger,
    store: BuildStore | undefined,
    cache: { cache: ChunkCache; owned: boolean } | undefined,
  ) {
    this.state = state;
    this.#logger = logger;
    this.#store = store;
    if (store && cache) this.#remoteMemory = new RemoteMemory({ store, cache: cache.cache });
    this.#ownCache = cache?.owned ? cache.cache : undefined;
    this.hostCapacity = resolveCapacity(state.config);
    this.#capacity = new AdmissionController(this.hostCapacity.limits, {
      mode: state.config.admission,
      queueSize: state.config.admissionQueueSize,
      queueTimeoutMs: state.config.admissionTimeoutMs,
      describeLimits: describeCapacity(this.hostCapacity, state.config),
    });
    if (state.config.networkPoolSize > 0) {
      // Namespaces, veths, TAPs and rules made ahead of demand: a create takes one in well under 1 ms.
      this.#networkPool = new NetworkPool(state, { logger });
      this.#networkPool.start();
    }
  }

  /** The prepared-network pool's counters (undefined without `networkPoolSize`). */
  get networkPool(): NetworkPoolStats | undefined {
    return this.#networkPool?.stats;
  }

  /** Takes the state directory's lock and reclaims what a crashed previous run left in it. */
  static async open(
    config: OrchestratorConfig,
    options: OpenOrchestratorOptions = {},
  ): Promise<Orchestrator> {
    const logger = options.logger ?? silentLogger;
    if (options.checkArtifacts) {
      try {
        await (options.resolver ?? defaultArtifactResolver).resolve(config);
      } catch (cause) {
        throw new OrchestratorError(
          "ARTIFACT_INVALID",
          `an artifact is missing or wrong: ${(cause as Error).message} (\`sbx doctor\` lists every check with its fix)`,
          { cause, details: { code: (cause as { code?: string }).code } },
        );
      }
      // No jailer and no SBX_UNJAILED: no VM could start, so say so now (NOT_AVAILABLE names both).
      await launchModeFor({ config });
    }
    const state = await openOrchestratorState(config, { logger });
    let cache: { cache: ChunkCache; owned: boolean } | undefined;
    try {
      if (options.store && options.chunkCache !== false)
        cache = options.chunkCache
          ? { cache: options.chunkCache, owned: false }
          : {
              cache: await ChunkCache.open({
                ...chunkCacheOptionsFromEnv({ directory: join(config.stateDir, "chunk-cache") }),
                logger,
              }),
              owned: true,
            };
    } catch (error) {
      await state.close();
      throw error;
    }
    return new Orchestrator(state, logger, options.store, cache);
  }

  /** The chunk cache's counters (hits, misses, bytes fetched, evictions), with a store and a cache. */
  chunkCacheStats(): ReturnType<ChunkCache["stats"]> | undefined {
    return this.#remoteMemory ? this.#remoteMemory.cacheStats() : undefined;
  }

  /** Requests and bytes this orchestrator took from the store for lazy memory. */
  get remoteMemoryFetched(): { requests: number; storedBytes: number } | undefined {
    return this.#remoteMemory ? { ...this.#remoteMemory.fetched } : undefined;
  }

  get config(): OrchestratorConfig {
    return this.state.config;
  }

  metrics(): OrchestratorMetricsWithCapacity {
    return { ...this.#metrics, capacity: this.#capacity.snapshot() };
  }

  /** The sandboxes this orchestrator started (forks included) and has not killed. */
  get sandboxes(): Sandbox[] {
    return [...this.#live];
  }

  async buildTemplate(options: BuildTemplateOptions): Promise<BuiltTemplate> {
    const built = await buildTemplate(this.state, { logger: this.#logger, ...options });
    this.#upload(built.id);
    return built;
  }

  /** Starts uploading a published build to the store, in the background of the caller. */
  #upload(id: string): void {
    const store = this.#store;
    if (!store || this.#uploads.has(id)) return;
    const release = this.state.leases.lease(id);
    const upload = uploadToStore(this.state, store, id)
      .then(() => this.#logger.info?.({ build: id, store: store.description }, "build uploaded"))
      .finally(release);
    upload.catch((error: unknown) =>
      this.#logger.error?.({ build: id, error: (error as Error).message }, "build upload failed"),
    );
    this.#uploads.set(id, upload);
  }

  /**
   * Resolves once build `id` is in the store (build.json landed last), rejects with the upload's error;
   * without a store, NOT_AVAILABLE.
   */
  async uploaded(id: string): Promise<void> {
    if (!this.#store) throw new OrchestratorError("NOT_AVAILABLE", "this orchestrator has no build store");
    this.#upload(id);
    await this.#uploads.get(id);
  }

  /** From a template (`template`), a paused sandbox (`from`) or any build (`build`). */
  async createSandbox(options: CreateSandboxOptions): Promise<Sandbox> {
    // Otherwise admission counts sandbox slots, creates in flight included (CAPACITY_EXCEEDED).
    if (this.config.admission === "off" && this.#live.size >= this.config.maxSandboxes) {
      throw new OrchestratorError(
        "INVALID_OPTIONS",
        `maxSandboxes (${this.config.maxSandboxes}) are running`,
      );
    }
    return createSandbox(this.state, options, {
      metrics: this.#metrics,
      logger: this.#logger,
      ...(this.#networkPool ? { networkPool: this.#networkPool } : {}),
      ...(this.#store ? { store: this.#store, onBuildPublished: (id: string) => this.#upload(id) } : {}),
      ...(this.#remoteMemory ? { remoteMemory: this.#remoteMemory } : {}),
      onCreated: (sandbox) => {
        this.#live.add(sandbox);
        this.#logger.info?.(
          { id: sandbox.id, template: sandbox.template, build: sandbox.build.id },
          "sandbox created",
        );
      },
      onGone: (sandbox) => this.#live.delete(sandbox),
      // Capacity first, then a start slot (maxConcurrentCreates): a create the host has no room for
      // is refused or queued at once, never after waiting for a slot behind others. Forks of a
      // sandbox reuse these hooks, so they are admitted, charged and limited too.
      admit: async (build, signal) => {
        const reservation = await this.#capacity.admit(
          demandOf(build, this.config),
          signal ? { signal } : {},
        );
        let freeSlot: () => void;
        try {
          freeSlot = await takeSlot(this.state.createLimiter, signal);
        } catch (error) {
          reservation.release();
          throw error;
        }
        return {
          started: freeSlot,
          release: () => {
            freeSlot();
            reservation.release();
          },
        };
      },
    });
  }

  templates(): Promise<TemplatePointer[]> {
    return listTemplatePointers(this.config);
  }

  pausedSandboxes(): Promise<PausedSandbox[]> {
    return listPausedSandboxes(this.config);
  }

  /** Removes a template's name; its builds are freed by the next `gc()` unless a pause still needs them. */
  removeTemplate(name: string): Promise<void> {
    return removeTemplatePointer(this.config, name);
  }

  /** Forgets a paused sandbox; its build is freed by the next `gc()`. */
  removePausedSandbox(id: string): Promise<void> {
    return removePausedSandbox(this.config, id);
  }

  /** Deletes every build nothing pins (names, paused and running sandboxes, creates in flight). */
  gc(): Promise<GcReport> {
    return collectGarbage(this.config, this.state.leases);
  }

  /** Kills every live sandbox, then releases the state directory. */
  async close(): Promise<void> {
    this.#capacity.close();
    const results = await Promise.allSettled([...this.#live].map((s) => s.kill()));
    // Uploads in flight finish (or fail) before the state directory is let go.
    await Promise.allSettled(this.#uploads.values());
    try {
      await this.#networkPool?.close();
      await this.#ownCache?.[Symbol.asyncDispose]();
    } finally {
      await this.state.close();
    }
    const failed = results.filter((r) => r.status === "rejected");
    if (failed.length > 0) {
      throw new OrchestratorError("STEP_CLEANUP_FAILED", `${failed.length} sandboxes did not stop cleanly`, {
        cause: (failed[0] as PromiseRejectedResult).reason,
      });
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
