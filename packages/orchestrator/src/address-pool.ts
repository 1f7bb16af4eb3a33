import { OrchestratorError } from "./errors.ts";
import { blockSize, formatIpv4, type Ipv4Cidr, parseCidr } from "./ipv4.ts";

const SANDBOX_PREFIX_LENGTH = 30;

/** The two ends of one sandbox's veth pair: a /30 carved out of the pool. */
export interface SandboxAddresses {
  index: number;
  /** On the host-side veth, in the host's namespace; the namespace's default gateway. */
  hostAddress: string;
  /** On the namespace-side veth. */
  namespaceAddress: string;
  prefixLength: 30;
}

/**
 * Hands out per-sandbox /30 subnets from a pool such as 10.200.0.0/16 (16384 sandboxes). Block
 * `i` is `pool + 4i`: `.1` is the host side, `.2` the namespace side. The pool only tracks what this
 * process allocated or reserved; reserve the indexes of sandboxes reclaimed from the state dir.
 */
export class AddressPool {
  readonly cidr: Ipv4Cidr;
  readonly capacity: number;
  readonly #used = new Set<number>();

  /** `pool` as the config parsed it (`config.addresses.hostAddressPool`), or as text (tests, defaults). */
  constructor(pool: Ipv4Cidr | string) {
    const cidr = typeof pool === "string" ? parseCidr(pool, { strict: true }) : pool;
    if (!cidr || cidr.prefixLength > SANDBOX_PREFIX_LENGTH) {
      const text = typeof pool === "string" ? pool : `${formatIpv4(pool.network)}/${pool.prefixLength}`;
      throw new OrchestratorError(
        "INVALID_OPTIONS",
        `address pool "${text}" must be an IPv4 network address with a prefix of /30 or shorter, e.g. 10.200.0.0/16`,
        { details: { pool: text } },
      );
    }
    this.cidr = cidr;
    this.capacity = blockSize(cidr.prefixLength) / blockSize(SANDBOX_PREFIX_LENGTH);
  }

  get inUse(): number {
    return this.#used.size;
  }

  addressesFor(index: number): SandboxAddresses {
    if (!Number.isInteger(index) || index < 0 || index >= this.capacity) {
      throw new OrchestratorError(
        "INVALID_OPTIONS",
        `address index ${index} is outside the pool (0..${this.capacity - 1})`,
        { details: { index } },
      );
    }
    const base = this.cidr.network + index * blockSize(SANDBOX_PREFIX_LENGTH);
    return {
      index,
      hostAddress: formatIpv4(base + 1),
      namespaceAddress: formatIpv4(base + 2),
      prefixLength: SANDBOX_PREFIX_LENGTH,
    };
  }

  /** The lowest free block. */
  allocate(): SandboxAddresses {
    for (let index = 0; index < this.capacity; index++) {
      if (!this.#used.has(index)) {
        this.#used.add(index);
        return this.addressesFor(index);
      }
    }
    throw new OrchestratorError(
      "ADDRESS_POOL_EXHAUSTED",
      `all ${this.capacity} /30 blocks of ${formatIpv4(this.cidr.network)}/${this.cidr.prefixLength} are in use; use a larger hostAddressPool or lower maxSandboxes`,
    );
  }

  /** Marks a known block as taken (a sandbox found in the state directory). */
  reserve(index: number): SandboxAddresses {
    const addresses = this.addressesFor(index);
    if (this.#used.has(index)) {
      throw new OrchestratorError("INVALID_OPTIONS", `address block ${index} is already in use`, {
        details: { index },
      });
    }
    this.#used.add(index);
    return addresses;
  }

  release(index: number): void {
    this.#used.delete(index);
  }
}
