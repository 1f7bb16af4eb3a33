import { createHash } from "node:crypto";
import type { CommandResult } from "@sbx/arch";
import type { SandboxAddresses } from "./address-pool.ts";
import { OrchestratorError } from "./errors.ts";
import { runCommand } from "./exec.ts";
import {
  currentOwnerProcess,
  formatOwnerTag,
  NAMESPACE_NAME,
  type NetworkOwnerTag,
  parseOwnerTag,
} from "./network-owner.ts";
import { FIREWALL_TABLE_NAME } from "./nftables.ts";

const INTERFACE_NAME = /^[A-Za-z0-9_.-]{1,15}$/;
/** The namespace end of the veth pair; the same name in every namespace. */
export const NAMESPACE_VETH_NAME = "veth0";

export interface NetworkNamespaceOptions {
  /** The `ip netns` name; unique on the host. */
  name: string;
  /** The host end of the veth pair; unique on the host, at most 15 characters. */
  hostVethName: string;
  addresses: SandboxAddresses;
  /** TAP name inside the namespace, the same in every sandbox (the snapshot remembers it). */
  tapName: string;
  /** TAP address with prefix, e.g. 192.168.241.1/29: the guest's gateway, the same in every sandbox. */
  tapAddress: string;
  /** The guest's address (configured inside the guest, recorded here). */
  guestAddress: string;
  /**
   * Forwarding and NAT inside the namespace (default true): the guest's packets leave masqueraded as
   * the namespace's veth address, and exposed ports are DNATed to the guest. Without it traffic stays
   * between the namespace and the host-side veth.
   */
  nat?: boolean;
  /** The nftables table that will hold this network's host rules, recorded in its owner tag. */
  firewallTable?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Names needed to tear a sandbox's network down, also from a state record after a crash. */
export interface NetworkNamespaceRef {
  name: string;
  hostVethName: string;
}

/**
 * Default names: `{prefix}-{sandboxId}` for the namespace and, for the host veth, the prefix and 12
 * hex digits of the id's sha256 (15 characters, the Linux limit), so two orchestrators with different
 * state directories never pick the same host interface name.
 */
export function networkNamesFor(sandboxId: string, prefix = "sbx"): { name: string; hostVethName: string } {
  const digest = createHash("sha256").update(sandboxId).digest("hex");
  return { name: `${prefix}-${sandboxId}`, hostVethName: `${prefix}${digest}`.slice(0, 15) };
}

function validate(options: NetworkNamespaceOptions): void {
  const problems: string[] = [];
  if (!NAMESPACE_NAME.test(options.name)) problems.push(`namespace name "${options.name}"`);
  for (const [what, value] of [
    ["host veth name", options.hostVethName],
    ["TAP name", options.tapName],
  ] as const) {
    if (!INTERFACE_NAME.test(value) || value === NAMESPACE_VETH_NAME) problems.push(`${what} "${value}"`);
  }
  if (options.firewallTable !== undefined && !FIREWALL_TABLE_NAME.test(options.firewallTable)) {
    problems.push(`firewall table "${options.firewallTable}"`);
  }
  if (problems.length > 0) {
    throw new OrchestratorError(
      "INVALID_OPTIONS",
      `invalid ${problems.join(", ")}: Linux interface names are 1-15 of A-Z a-z 0-9 _ . - (and not "${NAMESPACE_VETH_NAME}")`,
      { details: { problems } },
    );
  }
}

function ip(args: string[], options: { timeoutMs?: number; signal?: AbortSignal; input?: string } = {}) {
  return runCommand(["ip", ...args], {
    timeoutMs: options.timeoutMs ?? 10_000,
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.input !== undefined ? { input: options.input } : {}),
  });
}

function stderrOf(error: unknown): string {
  if (error instanceof OrchestratorError) return String(error.details.stderr ?? "");
  return "";
}

/** The nftables table inside every sandbox namespace (the namespace is sbx's alone). */
export const NAMESPACE_TABLE = "sbx";

/**
 * Clones share the guest address, so the namespace is where they become distinct: the guest's
 * traffic leaves as the namespace's veth address, and a port exposed on that address reaches this
 * guest only.
 */
function namespaceNatScript(): string {
  return `table ip ${NAMESPACE_TABLE} {
  map exposed { type inet_service : ipv4_addr; }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "${NAMESPACE_VETH_NAME}" dnat to tcp dport map @exposed
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "${NAMESPACE_VETH_NAME}" masquerade
  }
}
`;
}

/**
 * One sandbox's network: a namespace holding a TAP with the same name and address as in every
 * other sandbox (Firecracker's network-for-clones pattern), joined to the host by a veth pair with
 * a per-sandbox /30. With `nat` (the default) the namespace forwards the guest's traffic out of its
 * veth, masqueraded; what the host lets through is the host firewall's business (nftables.ts).
 */
export class NetworkNamespace implements AsyncDisposable {
  readonly name: string;
  readonly hostVethName: string;
  readonly namespaceVethName = NAMESPACE_VETH_NAME;
  readonly addresses: SandboxAddresses;
  readonly tapName: string;
  readonly tapAddress: string;
  readonly guestAddress: string;
  #tornDown = false;

  constructor(options: NetworkNamespaceOptions) {
    this.name = options.name;
    this.hostVethName = options.hostVethName;
    this.addresses = options.addresses;
    this.tapName = options.tapName;
    this.tapAddress = options.tapAddress;
    this.guestAddress = options.guestAddress;
  }

  get ref(): NetworkNamespaceRef {
    return { name: this.name, hostVethName: this.hostVethName };
  }

  get isTornDown(): boolean {
    return this.#tornDown;
  }

  /** Runs a command inside the namespace (`ip netns exec`). */
  exec(argv: readonly string[], options: { timeoutMs?: number; signal?: AbortSignal } = {}) {
    return runCommand(["ip", "netns", "exec", this.name, ...argv], options);
  }

  /** Removes the veth pair and the namespace; safe to call again and after a crash. */
  async teardown(): Promise<void> {
    await teardownNetworkNamespace(this.ref);
    this.#tornDown = true;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.teardown();
  }
}

/** Creates the namespace, veth pair and TAP; on any failure removes what it created and throws. */
export async function createNetworkNamespace(options: NetworkNamespaceOptions): Promise<NetworkNamespace> {
  validate(options);
  const run = {
    ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  };
  const { hostAddress, namespaceAddress, prefixLength } = options.addresses;
  const ownerTag = formatOwnerTag({
    ...(await currentOwnerProcess()),
    namespace: options.name,
    ...(options.firewallTable ? { firewallTable: options.firewallTable } : {}),
  });
  let createdNamespace = false;
  let createdVeth = false;
  try {
    await ip(["netns", "add", options.name], run);
    createdNamespace = true;
    await ip(
      [
        "link",
        "add",
        options.hostVethName,
        "type",
        "veth",
        "peer",
        "name",
        NAMESPACE_VETH_NAME,
        "netns",
        options.name,
      ],
      run,
    );
    createdVeth = true;
    await ip(["-batch", "-"], {
      ...run,
      input: [
        // Before anything else can fail: from here on a crash leaves a network its tag accounts for.
        `link set dev ${options.hostVethName} alias ${ownerTag}`,
        `addr add ${hostAddress}/${prefixLength} dev ${options.hostVethName}`,
        `link set ${options.hostVethName} up`,
        "",
      ].join("\n"),
    });
    await ip(["-n", options.name, "-batch", "-"], {
      ...run,
      input: [
        "link set lo up",
        `addr add ${namespaceAddress}/${prefixLength} dev ${NAMESPACE_VETH_NAME}`,
        `link set ${NAMESPACE_VETH_NAME} up`,
        `tuntap add dev ${options.tapName} mode tap`,
        `addr add ${options.tapAddress} dev ${options.tapName}`,
        `link set ${options.tapName} up`,
        `route add default via ${hostAddress}`,
        "",
      ].join("\n"),
    });
    if (options.nat !== false) {
      // /proc/sys/net is per network namespace: this turns on forwarding in the sandbox's only.
      await ip(
        [
          "netns",
          "exec",
          options.name,
          "/bin/sh",
          "-c",
          "echo 1 > /proc/sys/net/ipv4/ip_forward && exec nft -f -",
        ],
        { ...run, input: namespaceNatScript() },
      );
    }
  } catch (error) {
    // Only remove what this call created: an existing namespace or link belongs to someone else.
    if (createdVeth) await deleteLink(options.hostVethName).catch(() => undefined);
    if (createdNamespace) await deleteNamespace(options.name).catch(() => undefined);
    const stderr = stderrOf(error).trim();
    const hint = /File exists/.test(stderr)
      ? "; a namespace or link with that name already exists (a crashed run? run reclaim) or the address is taken"
      : /Operation not permitted/.test(stderr)
        ? "; network namespaces need root or CAP_NET_ADMIN"
        : "";
    throw new OrchestratorError(
      "NETWORK_SETUP_FAILED",
      `setting up network namespace ${options.name} failed: ${(error as Error).message}${hint}`,
      { cause: error, details: { name: options.name, hostVethName: options.hostVethName } },
    );
  }
  return new NetworkNamespace(options);
}

async function deleteLink(name: string): Promise<boolean> {
  try {
    await ip(["link", "del", name]);
    return true;
  } catch (error) {
    if (/Cannot find device/.test(stderrOf(error))) return false;
    throw error;
  }
}

async function deleteNamespace(name: string): Promise<boolean> {
  try {
    await ip(["netns", "del", name]);
    return true;
  } catch (error) {
    if (/No such file or directory/.test(stderrOf(error))) return false;
    throw error;
  }
}

/**
 * Deletes the host veth (which takes its peer with it) and the namespace. Idempotent: what is
 * already gone is skipped. The TAP goes with the namespace once no process (Firecracker) holds it,
 * so kill Firecracker first.
 */
export async function teardownNetworkNamespace(
  ref: NetworkNamespaceRef,
): Promise<{ removedLink: boolean; removedNamespace: boolean }> {
  const removedLink = await deleteLink(ref.hostVethName);
  const removedNamespace = await deleteNamespace(ref.name);
  return { removedLink, removedNamespace };
}

/** Names from `ip netns list`. */
export async function listNetworkNamespaces(): Promise<string[]> {
  return (await listNetworkNamespaceIds()).map((entry) => entry.name);
}

/** `ip netns list` with each namespace's id as the host namespace knows it (none until one is assigned). */
async function listNetworkNamespaceIds(): Promise<{ name: string; id?: number }[]> {
  const { stdout } = await ip(["-j", "netns", "list"]);
  if (stdout.trim() === "") return [];
  return JSON.parse(stdout) as { name: string; id?: number }[];
}

/** A host link whose alias is an sbx owner tag, and whether its veth peer is in the namespace the tag names. */
export interface TaggedLink {
  hostVethName: string;
  tag: NetworkOwnerTag;
  peerInTaggedNamespace: boolean;
}

/** The host's links that carry an sbx owner tag (see network-owner.ts); other aliases are ignored. */
export async function listTaggedLinks(): Promise<TaggedLink[]> {
  const { stdout } = await ip(["-j", "link", "show"]);
  if (stdout.trim() === "") return [];
  const links = JSON.parse(stdout) as { ifname: string; ifalias?: string; link_netnsid?: number }[];
  const tagged = links.flatMap((link) => {
    const tag = parseOwnerTag(link.ifalias);
    return tag && INTERFACE_NAME.test(link.ifname) ? [{ link, tag }] : [];
  });
  if (tagged.length === 0) return [];
  const namespaceIds = new Map((await listNetworkNamespaceIds()).map((entry) => [entry.name, entry.id]));
  return tagged.map(({ link, tag }) => {
    const id = namespaceIds.get(tag.namespace);
    return {
      hostVethName: link.ifname,
      tag,
      peerInTaggedNamespace: id !== undefined && id === link.link_netnsid,
    };
  });
}

/** Interface names in the host namespace (or in `namespace`). */
export async function listLinks(namespace?: string): Promise<string[]> {
  const { stdout }: CommandResult = await ip([...(namespace ? ["-n", namespace] : []), "-j", "link", "show"]);
  if (stdout.trim() === "") return [];
  return (JSON.parse(stdout) as { ifname: string }[]).map((entry) => entry.ifname);
}

/** IPv4 addresses on the host namespace's interfaces (or `namespace`'s). */
export async function listHostAddresses(namespace?: string): Promise<string[]> {
  const { stdout } = await ip([...(namespace ? ["-n", namespace] : []), "-j", "-4", "addr", "show"]);
  if (stdout.trim() === "") return [];
  return (JSON.parse(stdout) as { addr_info?: { local: string }[] }[]).flatMap((entry) =>
    (entry.addr_info ?? []).map((a) => a.local),
  );
}
