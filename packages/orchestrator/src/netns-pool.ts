// Sandbox networks prepared ahead of demand. Creating one (namespace, veth pair, TAP, NAT, host rules)
// costs several commands; taking a prepared one costs none when the sandbox wants the default policy.
// Every prepared network is recorded in {stateDir}/network-pool/ before it exists, so a crash leaves
// nothing that reclaimNetworkPool cannot remove. A taken network is never returned: the next sandbox
// would inherit the last one's conntrack entries and neighbours.
import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { type Logger, silentLogger, writeJsonAtomic } from "@sbx/arch";
import { z } from "zod";
import type { AddressPool } from "./address-pool.ts";
import { type OrchestratorConfig, parsePortRange } from "./config.ts";
import { DEFAULT_EGRESS_POLICY, type EgressPolicy } from "./egress-policy.ts";
import { guestResolvers } from "./host-resolvers.ts";
import { networkNamesFor, teardownNetworkNamespace } from "./network.ts";
import { removeSandboxRules } from "./nftables.ts";
import { checkProcessIdentity, type ProcessIdentity, processIdentitySchema } from "./process-identity.ts";
import { SandboxNetwork } from "./sandbox-network.ts";

export const NETWORK_POOL_DIR = "network-pool";
/**
 * A taken network's pool record, renamed into the sandbox's directory: the cheapest hand-over that a
 * process crash cannot lose (one rename, no fsync). Power loss needs no record: the namespaces, links
 * and rules it names are kernel state and are gone after a reboot too.
 */
export const NETWORK_RECORD_FILE = "network.json";

export function poolRecordPath(stateDirRoot: string, name: string): string {
  return join(stateDirRoot, NETWORK_POOL_DIR, `${name}.json`);
}

export const poolRecordSchema = z.object({
  schemaVersion: z.literal(1),
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/),
  hostVethName: z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/),
  addressIndex: z.number().int().nonnegative(),
  firewallTable: z.string().regex(/^[A-Za-z][A-Za-z0-9_]{0,30}$/),
  owner: processIdentitySchema,
});
export type PoolRecord = z.infer<typeof poolRecordSchema>;

/** What a network needs from the orchestrator: the slice of OrchestratorState the pool uses. */
export interface NetworkHost {
  config: OrchestratorConfig;
  stateDir: { root: string };
  self: ProcessIdentity;
  addressPool: AddressPool;
}

/**
 * A network with `policy` (default: the config's egressPolicy, else allow with the default denies)
 * from a fresh /30, which goes back to the address pool when this fails. `beforeCreate` runs once the
 * names and address are fixed and before anything exists: record them there, so a crash in the
 * middle leaves something reclaim can find.
 */
export async function createSandboxNetwork(
  host: NetworkHost,
  names: { name: string; hostVethName: string },
  options: {
    signal?: AbortSignal;
    policy?: EgressPolicy;
    beforeCreate?: (addressIndex: number) => Promise<void>;
  } = {},
): Promise<SandboxNetwork> {
  const { config, addressPool } = host;
  const addresses = addressPool.allocate();
  try {
    await options.beforeCreate?.(addresses.index);
    return await SandboxNetwork.create({
      ...names,
      addresses,
      tapName: config.tapName,
      tapAddress: config.tapAddress,
      guestAddress: config.guestAddress,
      hostAddressPool: addressPool.cidr,
      firewallTable: config.firewallTable,
      resolvers: await guestResolvers(config),
      publishPortRange: parsePortRange(config.publishPortRange),
      // The operator's default policy, so a pooled network taken with it needs no transaction.
      policy: options.policy ?? config.egressPolicy ?? DEFAULT_EGRESS_POLICY,
      ...(options.signal ? { signal: options.signal } : {}),
    });
  } catch (error) {
    addressPool.release(addresses.index);
    throw error;
  }
}

/** Tears a network down and returns its /30 to the address pool. */
export async function releaseSandboxNetwork(host: NetworkHost, network: SandboxNetwork): Promise<void> {
  await network.teardown();
  host.addressPool.release(network.addresses.index);
}

export interface NetworkPoolStats {
  /** Prepared and waiting. */
  ready: number;
  /** Being prepared now. */
  preparing: number;
  /** Takes served from the pool. */
  hits: number;
  /** Takes that had to create a network on the spot (pool empty). */
  misses: number;
  /** Background preparations that failed (each is logged). */
  failures: number;
}

export interface NetworkPoolOptions {
  /** Networks kept ready; default `config.networkPoolSize`. */
  size?: number;
  logger?: Logger;
  /** Names are `{prefix}-p{hex}` (namespace) and `{prefix}{hex}` (host veth); default "sbx". */
  namePrefix?: string;
  /** Networks prepared at once while refilling; default 2, so a refill never starves the creates. */
  refillConcurrency?: number;
}

/** What `take` hands over. The caller records it in its sandbox record inside `claim`. */
export interface TakenNetwork {
  network: SandboxNetwork;
  fromPool: boolean;
}

export class NetworkPool implements AsyncDisposable {
  readonly size: number;
  readonly #host: NetworkHost;
  readonly #logger: Logger;
  readonly #namePrefix: string;
  readonly #refillConcurrency: number;
  readonly #ready: SandboxNetwork[] = [];
  readonly #preparing = new Set<Promise<void>>();
  readonly #stats = { hits: 0, misses: 0, failures: 0 };
  #closed = false;
  #consecutiveFailures = 0;

  constructor(host: NetworkHost, options: NetworkPoolOptions = {}) {
    this.#host = host;
    this.size = options.size ?? host.config.networkPoolSize;
    this.#logger = options.logger ?? silentLogger;
    this.#namePrefix = options.namePrefix ?? "sbx";
    this.#refillConcurrency = Math.max(1, options.refillConcurrency ?? 2);
  }

  get stats(): NetworkPoolStats {
    return { ready: this.#ready.length, preparing: this.#preparing.size, ...this.#stats };
  }

  get #directory(): string {
    return join(this.#host.stateDir.root, NETWORK_POOL_DIR);
  }

  #recordPath(name: string): string {
    return poolRecordPath(this.#host.stateDir.root, name);
  }

  /** Starts filling the pool in the background. */
  start(): void {
    this.#refill();
  }

  /** Resolves once the pool holds `size` networks (or preparing failed twice); for start-up and tests. */
  async filled(): Promise<void> {
    this.#refill();
    while (this.#preparing.size > 0) {
      await Promise.race(this.#preparing);
      // A finished preparation starts the next one in its own callback; let it register.
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  #refill(): void {
    // Two failures in a row (no root, no nft): stop retrying in a loop; the next take tries again.
    if (this.#closed || this.#consecutiveFailures >= 2) return;
    while (
      this.#ready.length + this.#preparing.size < this.size &&
      this.#preparing.size < this.#refillConcurrency
    ) {
      const job: Promise<void> = this.#prepare()
        .then((network) => {
          this.#consecutiveFailures = 0;
          if (this.#closed) return this.#discard(network);
          this.#ready.push(network);
        })
        .catch((error: unknown) => {
          this.#stats.failures += 1;
          this.#consecutiveFailures += 1;
          this.#logger.warn?.(
            { error: (error as Error).message },
            "network pool: preparing a network failed",
          );
        })
        .finally(() => {
          this.#preparing.delete(job);
          this.#refill();
        });
      this.#preparing.add(job);
    }
  }

  async #prepare(signal?: AbortSignal): Promise<SandboxNetwork> {
    const names = networkNamesFor(`p${randomBytes(6).toString("hex")}`, this.#namePrefix);
    await mkdir(this.#directory, { recursive: true, mode: 0o700 });
    let recorded = false;
    try {
      return await createSandboxNetwork(this.#host, names, {
        ...(signal ? { signal } : {}),
        beforeCreate: async (addressIndex) => {
          const record: PoolRecord = {
            schemaVersion: 1,
            ...names,
            addressIndex,
            firewallTable: this.#host.config.firewallTable,
            owner: this.#host.self,
          };
          await writeJsonAtomic(this.#recordPath(names.name), record);
          recorded = true;
        },
      });
    } catch (error) {
      if (recorded) await rm(this.#recordPath(names.name), { force: true });
      throw error;
    }
  }

  async #discard(network: SandboxNetwork): Promise<void> {
    await releaseSandboxNetwork(this.#host, network);
    await rm(this.#recordPath(network.name), { force: true });
  }

  /**
   * A prepared network, or a new one when none is ready. `claim` must record the network as the
   * sandbox's before it returns, either in the sandbox's record or by renaming the pool's record (its
   * path is the second argument) to the sandbox's NETWORK_RECORD_FILE: only then does the pool forget
   * its record, so a crash at any point leaves the network in at least one record. When `claim` fails
   * the network is torn down. A `policy` other than the default costs one nft transaction.
   */
  async take(
    options: {
      claim?: (network: SandboxNetwork, poolRecord: string) => Promise<void>;
      policy?: EgressPolicy;
      signal?: AbortSignal;
    } = {},
  ): Promise<TakenNetwork> {
    let network = this.#ready.shift();
    const fromPool = network !== undefined;
    if (network) this.#stats.hits += 1;
    else {
      this.#stats.misses += 1;
      this.#consecutiveFailures = 0;
      network = await this.#prepare(options.signal);
    }
    try {
      await options.claim?.(network, this.#recordPath(network.name));
      await rm(this.#recordPath(network.name), { force: true });
      if (options.policy)
        await network.applyEgressPolicy(options.policy, options.signal ? { signal: options.signal } : {});
    } catch (error) {
      await this.#discard(network).catch(() => undefined);
      throw error;
    } finally {
      // Once the take is done: the refill's process spawns block this event loop for a moment each.
      setImmediate(() => this.#refill());
    }
    return { network, fromPool };
  }

  /** Tears a taken network down (after its Firecracker is gone) and frees its address. */
  release(network: SandboxNetwork): Promise<void> {
    return releaseSandboxNetwork(this.#host, network);
  }

  /** Stops refilling, waits for preparations under way, tears down every ready network. */
  async close(): Promise<void> {
    this.#closed = true;
    while (this.#preparing.size > 0) await Promise.allSettled([...this.#preparing]);
    const ready = this.#ready.splice(0);
    const results = await Promise.allSettled(ready.map((network) => this.#discard(network)));
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** The network record a sandbox's directory may hold (a pooled network handed over), or undefined. */
export async function readNetworkRecord(sandboxDir: string): Promise<PoolRecord | undefined> {
  let text: string;
  try {
    text = await readFile(join(sandboxDir, NETWORK_RECORD_FILE), "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  return poolRecordSchema.parse(JSON.parse(text));
}

export interface ReclaimedPoolNetwork {
  name: string;
  removedRules: boolean;
  removedLink: boolean;
  removedNamespace: boolean;
  error?: string;
}

/**
 * Removes the prepared networks a crashed orchestrator left: namespace, veth pair and host rules of
 * each pool record whose owner is gone. Records of a live owner are left alone.
 */
export async function reclaimNetworkPool(
  stateDirRoot: string,
  options: { logger?: Logger } = {},
): Promise<ReclaimedPoolNetwork[]> {
  const logger = options.logger ?? silentLogger;
  const directory = join(stateDirRoot, NETWORK_POOL_DIR);
  let entries: string[];
  try {
    entries = await readdir(directory);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw error;
  }
  const reclaimed: ReclaimedPoolNetwork[] = [];
  for (const entry of entries) {
    const path = join(directory, entry);
    if (!entry.endsWith(".json")) {
      // A temp file of an interrupted atomic write.
      if (entry.includes(".tmp-")) await rm(path, { force: true });
      continue;
    }
    let record: PoolRecord;
    try {
      record = poolRecordSchema.parse(JSON.parse(await readFile(path, "utf8")));
    } catch (error) {
      logger.warn?.(
        { path, error: (error as Error).message },
        "reclaim: unreadable network pool record left in place",
      );
      continue;
    }
    if ((await checkProcessIdentity(record.owner)).same) continue;
    const result: ReclaimedPoolNetwork = {
      name: record.name,
      removedRules: false,
      removedLink: false,
      removedNamespace: false,
    };
    try {
      result.removedRules = await removeSandboxRules(record.firewallTable, record.hostVethName);
      Object.assign(result, await teardownNetworkNamespace(record));
      await rm(path, { force: true });
    } catch (error) {
      result.error = (error as Error).message;
    }
    logger.info?.({ ...result }, "reclaim: pooled network");
    reclaimed.push(result);
  }
  return reclaimed;
}
