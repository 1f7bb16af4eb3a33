// Host capacity and admission. A create is charged what its build's VM may come to use (vCPUs, host
// memory, one sandbox slot) against what this host has, minus headroom for the host, times the
// overcommit ratios. A create that does not fit waits in a bounded FIFO queue, or is refused at once
// with CAPACITY_EXCEEDED naming what is short: a full host says so instead of starting VMs that
// starve each other into wait-alive timeouts (16 busy guests on 2 cores: 0 of 16 came up).
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import type { AdmissionMode, OrchestratorConfig } from "./config.ts";
import { OrchestratorError } from "./errors.ts";
import type { ConcurrencyLimiter } from "./limiter.ts";
import type { BuildManifest } from "./template-manifest.ts";

const MiB = 1024 * 1024;

export interface HostResources {
  vcpus: number;
  memoryBytes: number;
}

/** What one sandbox is charged while it exists (from its create's admission to its kill). */
export interface CapacityDemand {
  /** Guest vCPUs. */
  vcpus: number;
  /** Host memory bytes: the guest's size divided by its memory overcommit ratio. */
  memoryBytes: number;
}

export interface CapacityLimits {
  /** Guest vCPUs this host runs at once: (host vCPUs - reserved) x vcpuOvercommit. */
  vcpus: number;
  /** Host memory sandboxes may be charged: host memory - reserved. */
  memoryBytes: number;
  sandboxes: number;
}

export type CapacityResource = keyof CapacityLimits;

/** vCPUs from the CPUs this process may run on; memory from /proc/meminfo (MemTotal). */
export function readHostResources(meminfoPath = "/proc/meminfo"): HostResources {
  let memoryBytes = 0;
  try {
    const kib = /^MemTotal:\s+(\d+) kB/m.exec(readFileSync(meminfoPath, "utf8"))?.[1];
    memoryBytes = kib === undefined ? 0 : Number(kib) * 1024;
  } catch {
    memoryBytes = 0;
  }
  if (memoryBytes <= 0)
    throw new OrchestratorError(
      "NOT_AVAILABLE",
      `cannot read the host's memory from ${meminfoPath}; set SBX_HOST_MEMORY_MIB`,
    );
  return { vcpus: availableParallelism(), memoryBytes };
}

type CapacityConfig = Pick<
  OrchestratorConfig,
  | "maxSandboxes"
  | "hostVcpus"
  | "hostMemoryMib"
  | "reservedVcpus"
  | "reservedMemoryMib"
  | "vcpuOvercommit"
  | "memoryOvercommit"
  | "balloonMemoryOvercommit"
>;

/** The host headroom when none is configured: 10% of its memory, at least 256 MiB. */
export function defaultReservedMemoryBytes(hostMemoryBytes: number): number {
  return Math.max(256 * MiB, Math.round(hostMemoryBytes * 0.1));
}

export interface ResolvedCapacity {
  host: HostResources;
  reserved: HostResources;
  limits: CapacityLimits;
}

/** The configured overrides win over what the host reports (a test host, a cgroup-limited service). */
export function resolveCapacity(
  config: CapacityConfig,
  detect: () => HostResources = readHostResources,
): ResolvedCapacity {
  const detected =
    config.hostVcpus !== undefined && config.hostMemoryMib !== undefined ? undefined : detect();
  const host: HostResources = {
    vcpus: config.hostVcpus ?? (detected as HostResources).vcpus,
    memoryBytes:
      config.hostMemoryMib !== undefined
        ? config.hostMemoryMib * MiB
        : (detected as HostResources).memoryBytes,
  };
  const reserved: HostResources = {
    vcpus: config.reservedVcpus,
    memoryBytes:
      config.reservedMemoryMib !== undefined
        ? config.reservedMemoryMib * MiB
        : defaultReservedMemoryBytes(host.memoryBytes),
  };
  return {
    host,
    reserved,
    limits: {
      vcpus: Math.max(0, Math.floor((host.vcpus - reserved.vcpus) * config.vcpuOvercommit)),
      memoryBytes: Math.max(0, host.memoryBytes - reserved.memoryBytes),
      sandboxes: config.maxSandboxes,
    },
  };
}

/**
 * What a sandbox of `build` is charged. A build without boot parameters (imported from elsewhere)
 * counts one vCPU; its memory size is always recorded. A balloon with free page reporting gives idle
 * memory back, so such guests may be packed by the balloon ratio instead.
 */
export function demandOf(
  build: Pick<BuildManifest, "boot" | "memory">,
  config: Pick<OrchestratorConfig, "memoryOvercommit" | "balloonMemoryOvercommit">,
): CapacityDemand {
  const ratio = build.boot?.balloon?.freePageReporting
    ? config.balloonMemoryOvercommit
    : config.memoryOvercommit;
  return {
    vcpus: build.boot?.vcpuCount ?? 1,
    memoryBytes: Math.ceil(build.memory.sizeBytes / ratio),
  };
}

export interface CapacitySnapshot {
  mode: AdmissionMode;
  capacity: CapacityLimits;
  /** Charged to sandboxes admitted and not yet gone (running or still starting). */
  committed: CapacityLimits;
  available: CapacityLimits;
  queue: { length: number; max: number; timeoutMs: number };
  admitted: number;
  /** Refused at once: the host was full (reject), the queue was full, or it could never fit. */
  rejected: number;
  timedOut: number;
  aborted: number;
  /** Time admitted creates waited in the queue, over the last WAIT_SAMPLES admissions (0 when none). */
  waitMsP50: number;
  waitMsP99: number;
}

export interface Reservation {
  readonly demand: CapacityDemand;
  readonly waitedMs: number;
  /** Gives the charge back; a second call does nothing. */
  release(): void;
}

export interface AdmissionOptions {
  mode: AdmissionMode;
  /** Creates that may wait at once; one more is refused. */
  queueSize: number;
  queueTimeoutMs: number;
  /** Said in errors, so a caller sees where the limits come from. */
  describeLimits?: string;
  now?: () => number;
}

interface Waiter {
  demand: CapacityDemand;
  queuedAt: number;
  admit: () => void;
  refuse: (error: OrchestratorError) => void;
}

/** The last admissions whose wait times make the percentiles. */
const WAIT_SAMPLES = 1024;

function nearestRank(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)] as number;
}

/** Admits creates against capacity limits, in strict FIFO order (a large create is never starved). */
export class AdmissionController {
  readonly limits: CapacityLimits;
  readonly #options: AdmissionOptions;
  readonly #now: () => number;
  readonly #committed: CapacityLimits = { vcpus: 0, memoryBytes: 0, sandboxes: 0 };
  readonly #queue: Waiter[] = [];
  readonly #waits: number[] = [];
  #counters = { admitted: 0, rejected: 0, timedOut: 0, aborted: 0 };
  #closed = false;

  constructor(limits: CapacityLimits, options: AdmissionOptions) {
    for (const [name, value] of Object.entries(limits)) {
      if (!Number.isFinite(value) || value < 0)
        throw new OrchestratorError("INVALID_OPTIONS", `capacity ${name} must be >= 0, got ${value}`);
    }
    if (!Number.isInteger(options.queueSize) || options.queueSize < 0)
      throw new OrchestratorError(
        "INVALID_OPTIONS",
        `queueSize must be an integer >= 0, got ${options.queueSize}`,
      );
    if (!(options.queueTimeoutMs > 0))
      throw new OrchestratorError(
        "INVALID_OPTIONS",
        `queueTimeoutMs must be > 0, got ${options.queueTimeoutMs}`,
      );
    this.limits = Object.freeze({ ...limits });
    this.#options = options;
    this.#now = options.now ?? performance.now.bind(performance);
  }

  get queueLength(): number {
    return this.#queue.length;
  }

  snapshot(): CapacitySnapshot {
    const sorted = [...this.#waits].sort((a, b) => a - b);
    return {
      mode: this.#options.mode,
      capacity: { ...this.limits },
      committed: { ...this.#committed },
      available: {
        vcpus: this.limits.vcpus - this.#committed.vcpus,
        memoryBytes: this.limits.memoryBytes - this.#committed.memoryBytes,
        sandboxes: this.limits.sandboxes - this.#committed.sandboxes,
      },
      queue: {
        length: this.#queue.length,
        max: this.#options.queueSize,
        timeoutMs: this.#options.queueTimeoutMs,
      },
      ...this.#counters,
      waitMsP50: nearestRank(sorted, 0.5),
      waitMsP99: nearestRank(sorted, 0.99),
    };
  }

  /**
   * Resolves with a reservation once `demand` fits (release it when the sandbox is gone or its create
   * failed). Rejects with CAPACITY_EXCEEDED (reason `full`, `queue-full`, `queue-timeout` or
   * `too-large`) or ABORTED when `signal` aborts while it waits.
   */
  admit(demand: CapacityDemand, options: { signal?: AbortSignal } = {}): Promise<Reservation> {
    const { signal } = options;
    if (signal?.aborted) {
      this.#counters.aborted++;
      return Promise.reject(
        new OrchestratorError("ABORTED", "aborted before admission", { cause: signal.reason }),
      );
    }
    if (this.#closed)
      return Promise.reject(new OrchestratorError("ABORTED", "the orchestrator is closing: no new creates"));
    const started = this.#now();
    if (this.#options.mode === "off") return Promise.resolve(this.#take(demand, started));
    const tooLarge = this.#short(demand, { vcpus: 0, memoryBytes: 0, sandboxes: 0 });
    if (tooLarge.length > 0) return this.#refuse("too-large", demand, tooLarge);
    // Strict FIFO: nothing overtakes a waiter, or a large create could wait forever behind small ones.
    if (this.#queue.length === 0 && this.#fits(demand)) return Promise.resolve(this.#take(demand, started));
    const short = this.#short(demand, this.#committed);
    if (this.#options.mode === "reject") return this.#refuse("full", demand, short);
    if (this.#queue.length >= this.#options.queueSize) return this.#refuse("queue-full", demand, short);
    return new Promise<Reservation>((resolve, reject) => {
      const leave = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        const index = this.#queue.indexOf(waiter);
        if (index >= 0) this.#queue.splice(index, 1);
        // The head leaving may let the next one in.
        this.#drain();
      };
      const waiter: Waiter = {
        demand,
        queuedAt: started,
        admit: () => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          resolve(this.#take(demand, started));
        },
        refuse: (error) => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          this.#counters.aborted++;
          reject(error);
        },
      };
      const onAbort = () => {
        leave();
        this.#counters.aborted++;
        reject(
          new OrchestratorError(
            "ABORTED",
            `aborted after ${Math.round(this.#now() - started)} ms waiting for capacity`,
            { cause: signal?.reason },
          ),
        );
      };
      const timer = setTimeout(() => {
        leave();
        this.#counters.timedOut++;
        reject(
          this.#error(
            "queue-timeout",
            demand,
            this.#short(demand, this.#committed),
            ` after waiting ${this.#options.queueTimeoutMs} ms in the admission queue`,
          ),
        );
      }, this.#options.queueTimeoutMs);
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#queue.push(waiter);
    });
  }

  /** Refuses every waiting create (ABORTED) and every later one: nothing waits on a closing orchestrator. */
  close(): void {
    this.#closed = true;
    for (const waiter of this.#queue.splice(0)) {
      waiter.refuse(
        new OrchestratorError("ABORTED", "the orchestrator closed while this create waited for capacity"),
      );
    }
  }

  #fits(demand: CapacityDemand): boolean {
    return this.#short(demand, this.#committed).length === 0;
  }

  #short(demand: CapacityDemand, committed: CapacityLimits): CapacityResource[] {
    const short: CapacityResource[] = [];
    if (committed.vcpus + demand.vcpus > this.limits.vcpus) short.push("vcpus");
    if (committed.memoryBytes + demand.memoryBytes > this.limits.memoryBytes) short.push("memoryBytes");
    if (committed.sandboxes + 1 > this.limits.sandboxes) short.push("sandboxes");
    return short;
  }

  #take(demand: CapacityDemand, started: number): Reservation {
    this.#committed.vcpus += demand.vcpus;
    this.#committed.memoryBytes += demand.memoryBytes;
    this.#committed.sandboxes += 1;
    this.#counters.admitted++;
    const waitedMs = Math.max(0, this.#now() - started);
    this.#waits.push(waitedMs);
    if (this.#waits.length > WAIT_SAMPLES) this.#waits.shift();
    let released = false;
    return {
      demand,
      waitedMs,
      release: () => {
        if (released) return;
        released = true;
        this.#committed.vcpus -= demand.vcpus;
        this.#committed.memoryBytes -= demand.memoryBytes;
        this.#committed.sandboxes -= 1;
        this.#drain();
      },
    };
  }

  #drain(): void {
    for (let head = this.#queue[0]; head && this.#fits(head.demand); head = this.#queue[0]) {
      this.#queue.shift();
      head.admit();
    }
  }

  #refuse(reason: string, demand: CapacityDemand, short: CapacityResource[]): Promise<never> {
    this.#counters.rejected++;
    const why =
      reason === "queue-full"
        ? ` and ${this.#queue.length} creates already wait (queue size ${this.#options.queueSize})`
        : reason === "too-large"
          ? ": it does not fit even on an empty host"
          : "";
    return Promise.reject(this.#error(reason, demand, short, why));
  }

  #error(reason: string, demand: CapacityDemand, short: CapacityResource[], why: string): OrchestratorError {
    const free = (resource: CapacityResource) =>
      reason === "too-large" ? this.limits[resource] : this.limits[resource] - this.#committed[resource];
    const wanted: Record<CapacityResource, number> = { ...demand, sandboxes: 1 };
    const parts = short.map((resource) =>
      resource === "memoryBytes"
        ? `memory: needs ${mib(wanted.memoryBytes)}, ${mib(free(resource))} of ${mib(this.limits.memoryBytes)} free`
        : resource === "vcpus"
          ? `vCPUs: needs ${wanted.vcpus}, ${free(resource)} of ${this.limits.vcpus} free`
          : `sandboxes: ${this.#committed.sandboxes} of maxSandboxes ${this.limits.sandboxes} in use`,
    );
    return new OrchestratorError(
      "CAPACITY_EXCEEDED",
      `the host is full (${parts.join("; ") || "no capacity"})${why}${this.#options.describeLimits ? ` [${this.#options.describeLimits}]` : ""}`,
      {
        details: {
          reason,
          short,
          demand: { ...demand },
          capacity: { ...this.limits },
          committed: { ...this.#committed },
          queueLength: this.#queue.length,
        },
      },
    );
  }
}

function mib(bytes: number): string {
  return `${Math.round(bytes / MiB)} MiB`;
}

/**
 * Takes one of `limiter`'s slots and holds it until the returned function is called, so admission can
 * come first and a create waits for a start slot only once the host has room for it.
 */
export function takeSlot(limiter: ConcurrencyLimiter, signal?: AbortSignal): Promise<() => void> {
  return new Promise((resolve, reject) => {
    limiter
      .run(() => new Promise<void>((free) => resolve(() => free())), signal ? { signal } : {})
      .catch(reject);
  });
}

/** One line for errors and `sbx doctor`: where the numbers come from. */
export function describeCapacity(
  resolved: ResolvedCapacity,
  config: Pick<OrchestratorConfig, "vcpuOvercommit">,
): string {
  const { host, reserved } = resolved;
  return `host ${host.vcpus} vCPUs - ${reserved.vcpus} reserved, x${config.vcpuOvercommit}; ${mib(host.memoryBytes)} memory - ${mib(reserved.memoryBytes)} reserved`;
}
