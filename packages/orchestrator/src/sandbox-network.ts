// One sandbox's whole network: its namespace (TAP, veth, NAT), its chain in the host firewall with its
// egress policy, its bandwidth limit and its exposed ports. Created with the default policy (so a pool
// can prepare it before anyone asks), re-policied in one nft transaction, torn down exactly.
import type { SandboxAddresses } from "./address-pool.ts";
import { DEFAULT_EGRESS_POLICY, type EgressPolicy, egressRules, sameEgressPolicy } from "./egress-policy.ts";
import { OrchestratorError } from "./errors.ts";
import { runCommand } from "./exec.ts";
import type { Ipv4Cidr } from "./ipv4.ts";
import {
  createNetworkNamespace,
  NAMESPACE_TABLE,
  NAMESPACE_VETH_NAME,
  type NetworkNamespace,
  type NetworkNamespaceOptions,
} from "./network.ts";
import {
  addPublishedPort,
  applySandboxRules,
  ensureHostFirewall,
  type PublishedPort,
  REFUSE_CHAIN,
  removePublishedPort,
  removeSandboxRules,
} from "./nftables.ts";

export interface PortRange {
  from: number;
  to: number;
}

/** The namespace's own settings (see `NetworkNamespaceOptions`), then what the host side adds. */
export interface SandboxNetworkOptions
  extends Pick<
    NetworkNamespaceOptions,
    "name" | "hostVethName" | "addresses" | "tapName" | "tapAddress" | "guestAddress"
  > {
  /** The pool every sandbox's /30 comes from (its `AddressPool`'s parsed `cidr`); refused to sandboxes unless allowed. */
  hostAddressPool: Ipv4Cidr;
  /** The host's nftables table (`inet <table>`). */
  firewallTable: string;
  /** The guest's DNS resolvers: always reachable on port 53, whatever the policy. */
  resolvers: readonly string[];
  /** Host ports `expose(port, { publish: true })` picks from. */
  publishPortRange?: PortRange;
  policy?: EgressPolicy;
  signal?: AbortSignal;
}

/** A guest port reachable from the host; `close()` (or disposal, or the sandbox's teardown) removes it. */
export interface ExposedPort extends AsyncDisposable {
  guestPort: number;
  /** The namespace's veth address: distinct per sandbox, reachable from the host. */
  host: string;
  port: number;
  /** With `publish`: this port on every non-loopback address of the host forwards here too. */
  hostPort?: number;
  close(): Promise<void>;
}

const DEFAULT_PUBLISH_RANGE: PortRange = { from: 40_000, to: 40_999 };

function assertPort(port: number, what: string): number {
  if (!Number.isInteger(port) || port < 1 || port > 65_535) {
    throw new OrchestratorError("INVALID_OPTIONS", `${what} ${port} is not a TCP port (1-65535)`);
  }
  return port;
}

export class SandboxNetwork implements AsyncDisposable {
  readonly namespace: NetworkNamespace;
  readonly firewallTable: string;
  readonly resolvers: readonly string[];
  readonly #options: SandboxNetworkOptions;
  readonly #exposed = new Map<number, ExposedPort & { published?: PublishedPort }>();
  #policy: EgressPolicy;
  #bandwidth: number | undefined;
  #tornDown: Promise<void> | undefined;

  private constructor(namespace: NetworkNamespace, options: SandboxNetworkOptions, policy: EgressPolicy) {
    this.namespace = namespace;
    this.firewallTable = options.firewallTable;
    this.resolvers = options.resolvers;
    this.#options = options;
    this.#policy = policy;
  }

  /** Namespace, NAT, host rules and bandwidth, or nothing at all when any of it fails. */
  static async create(options: SandboxNetworkOptions): Promise<SandboxNetwork> {
    await ensureHostFirewall(options.firewallTable);
    const namespace = await createNetworkNamespace({
      name: options.name,
      hostVethName: options.hostVethName,
      addresses: options.addresses,
      tapName: options.tapName,
      tapAddress: options.tapAddress,
      guestAddress: options.guestAddress,
      firewallTable: options.firewallTable,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    const network = new SandboxNetwork(namespace, options, DEFAULT_EGRESS_POLICY);
    try {
      await network.#applyRules(options.policy ?? DEFAULT_EGRESS_POLICY, options.signal);
      await network.#applyBandwidth(options.policy?.egressBitsPerSecond);
      network.#policy = options.policy ?? DEFAULT_EGRESS_POLICY;
    } catch (error) {
      await network.teardown().catch(() => undefined);
      throw error;
    }
    return network;
  }

  get name(): string {
    return this.namespace.name;
  }

  get hostVethName(): string {
    return this.namespace.hostVethName;
  }

  get addresses(): SandboxAddresses {
    return this.namespace.addresses;
  }

  get policy(): EgressPolicy {
    return this.#policy;
  }

  get isTornDown(): boolean {
    return this.namespace.isTornDown;
  }

  /** The sandbox's exposed ports, for `sbx sandbox ports`. */
  get exposedPorts(): ExposedPort[] {
    return [...this.#exposed.values()];
  }

  #rules(policy: EgressPolicy): string[] {
    return egressRules(policy, {
      namespaceAddress: this.namespace.addresses.namespaceAddress,
      resolvers: this.resolvers,
      hostAddressPool: this.#options.hostAddressPool,
      refuseChain: REFUSE_CHAIN,
    });
  }

  #applyRules(policy: EgressPolicy, signal?: AbortSignal): Promise<void> {
    return applySandboxRules(this.firewallTable, this.hostVethName, this.#rules(policy), {
      ...(signal ? { signal } : {}),
    });
  }

  async #applyBandwidth(bitsPerSecond: number | undefined): Promise<void> {
    if (bitsPerSecond === this.#bandwidth) return;
    const device = ["dev", NAMESPACE_VETH_NAME, "root"];
    if (bitsPerSecond === undefined) {
      await runCommand(["tc", "-n", this.name, "qdisc", "del", ...device]);
    } else {
      // A burst of 1/10 s of traffic (at least 16 KiB) keeps tbf accurate at high rates with HZ-bound timers.
      const burst = Math.max(16_384, Math.ceil(bitsPerSecond / 80));
      await runCommand([
        "tc",
        "-n",
        this.name,
        "qdisc",
        "replace",
        ...device,
        "tbf",
        "rate",
        `${bitsPerSecond}bit`,
        "burst",
        String(burst),
        "latency",
        "50ms",
      ]);
    }
    this.#bandwidth = bitsPerSecond;
  }

  /**
   * Puts `policy` in force: one nft transaction replacing this sandbox's chain (packets see the old
   * rules or the new ones), then the bandwidth limit. A no-op when the policy is the one in force, so
   * a pooled namespace taken with the default policy costs no command at all.
   */
  async applyEgressPolicy(policy: EgressPolicy, options: { signal?: AbortSignal } = {}): Promise<void> {
    if (!sameEgressPolicy(policy, this.#policy)) {
      await this.#applyRules(policy, options.signal);
      this.#policy = policy;
    }
    await this.#applyBandwidth(policy.egressBitsPerSecond);
  }

  /**
   * Makes `guestPort` of this sandbox's guest reachable at the namespace's veth address (the same
   * port), which tells clones with one guest address apart; with `publish`, also at a host port on
   * every non-loopback host address (from `publishPortRange`, or the one given).
   */
  async expose(guestPort: number, options: { publish?: boolean | number } = {}): Promise<ExposedPort> {
    assertPort(guestPort, "guest port");
    const existing = this.#exposed.get(guestPort);
    if (
      existing &&
      (options.publish === undefined || options.publish === false || existing.hostPort !== undefined)
    ) {
      return existing;
    }
    if (!existing) {
      await this.namespace.exec([
        "nft",
        "add",
        "element",
        "ip",
        NAMESPACE_TABLE,
        "exposed",
        `{ ${guestPort} : ${this.namespace.guestAddress} }`,
      ]);
    }
    let published: PublishedPort | undefined;
    try {
      if (options.publish !== undefined && options.publish !== false) {
        published = await this.#publish(guestPort, options.publish === true ? undefined : options.publish);
      }
    } catch (error) {
      if (!existing) await this.#unexposeInNamespace(guestPort).catch(() => undefined);
      throw error;
    }
    const exposed = {
      guestPort,
      host: this.addresses.namespaceAddress,
      port: guestPort,
      ...(published ? { hostPort: published.hostPort, published } : {}),
      close: () => this.#unexpose(guestPort),
      [Symbol.asyncDispose]: () => this.#unexpose(guestPort),
    };
    this.#exposed.set(guestPort, exposed);
    return exposed;
  }

  async #publish(guestPort: number, hostPort: number | undefined): Promise<PublishedPort> {
    const target = { address: this.addresses.namespaceAddress, port: guestPort };
    if (hostPort !== undefined) {
      const published = { hostPort: assertPort(hostPort, "host port"), ...target };
      await addPublishedPort(this.firewallTable, published);
      return published;
    }
    const range = this.#options.publishPortRange ?? DEFAULT_PUBLISH_RANGE;
    const size = range.to - range.from + 1;
    // Start where this sandbox's /30 points, so concurrent sandboxes rarely race for the same port.
    const start = this.addresses.index % size;
    for (let i = 0; i < size; i++) {
      const published = { hostPort: range.from + ((start + i) % size), ...target };
      try {
        await addPublishedPort(this.firewallTable, published);
        return published;
      } catch (error) {
        if (!/already published/.test((error as Error).message)) throw error;
      }
    }
    throw new OrchestratorError(
      "NETWORK_SETUP_FAILED",
      `every host port of ${range.from}-${range.to} is published; widen publishPortRange`,
    );
  }

  #unexposeInNamespace(guestPort: number): Promise<unknown> {
    return this.namespace.exec([
      "nft",
      "delete",
      "element",
      "ip",
      NAMESPACE_TABLE,
      "exposed",
      `{ ${guestPort} }`,
    ]);
  }

  async #unexpose(guestPort: number): Promise<void> {
    const exposed = this.#exposed.get(guestPort);
    if (!exposed || this.namespace.isTornDown) return;
    if (exposed.published) await removePublishedPort(this.firewallTable, exposed.published);
    await this.#unexposeInNamespace(guestPort);
    this.#exposed.delete(guestPort);
  }

  /**
   * Host rules and published ports first (one transaction), then the veth pair and namespace. Kill
   * Firecracker first: the TAP goes with the namespace once nothing holds it. Idempotent.
   */
  teardown(): Promise<void> {
    this.#tornDown ??= (async () => {
      const published = [...this.#exposed.values()].flatMap((e) => (e.published ? [e.published] : []));
      await removeSandboxRules(this.firewallTable, this.hostVethName, published);
      this.#exposed.clear();
      await this.namespace.teardown();
    })();
    this.#tornDown.catch(() => {
      this.#tornDown = undefined;
    });
    return this.#tornDown;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.teardown();
  }
}

/** `network.applyEgressPolicy(policy)`, as a function for step lists. */
export function applyEgressPolicy(network: SandboxNetwork, policy: EgressPolicy): Promise<void> {
  return network.applyEgressPolicy(policy);
}

/** `network.expose(guestPort)`, as a function for step lists. */
export function expose(
  network: SandboxNetwork,
  guestPort: number,
  options: { publish?: boolean | number } = {},
): Promise<ExposedPort> {
  return network.expose(guestPort, options);
}
