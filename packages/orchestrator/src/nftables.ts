// The host's side of sandbox networking, in one nftables table that sbx owns (`inet sbx` by default):
// base chains that dispatch on the sandbox's host veth through a verdict map, one chain per sandbox,
// masquerade towards the uplink, and DNAT for published ports. Everything of one sandbox is added or
// removed in one `nft -f` transaction, so a failure changes nothing and removal touches nothing else.
// `nft delete table inet sbx` removes all of it.
import { writeFile } from "node:fs/promises";
import { ArchError } from "@sbx/arch";
import { OrchestratorError } from "./errors.ts";
import { runCommand } from "./exec.ts";
import { formatIpv4, parseIpv4 } from "./ipv4.ts";

export const DEFAULT_FIREWALL_TABLE = "sbx";
/** A table name sbx accepts: a letter, then up to 30 of A-Z a-z 0-9 _. */
export const FIREWALL_TABLE_NAME = /^[A-Za-z][A-Za-z0-9_]{0,30}$/;
const INTERFACE_NAME = /^[A-Za-z0-9_.-]{1,15}$/;
/** Refuses with a TCP reset or ICMP admin-prohibited: a denied client fails at once instead of timing out. */
export const REFUSE_CHAIN = "refuse";

export function assertTableName(table: string): string {
  if (!FIREWALL_TABLE_NAME.test(table)) {
    throw new OrchestratorError(
      "INVALID_OPTIONS",
      `firewall table "${table}" must be a letter then up to 30 of A-Z a-z 0-9 _`,
    );
  }
  return table;
}

function assertInterface(name: string): string {
  if (!INTERFACE_NAME.test(name)) {
    throw new OrchestratorError("INVALID_OPTIONS", `"${name}" is not a Linux interface name`);
  }
  return name;
}

/**
 * nft 1.0 takes only bare chain names (letters, digits, _), while interface names may hold `-` and `.`:
 * those are spelled `_` and two hex digits, so the mapping stays one-to-one.
 */
export function sandboxChainName(hostVethName: string): string {
  const encoded = assertInterface(hostVethName).replace(
    /[^A-Za-z0-9]/g,
    (c) => `_${c.charCodeAt(0).toString(16).padStart(2, "0")}`,
  );
  return `sandbox_${encoded}`;
}

export function hostVethOfChain(chain: string): string | undefined {
  if (!chain.startsWith("sandbox_")) return undefined;
  return chain
    .slice("sandbox_".length)
    .replace(/_([0-9a-f]{2})/g, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)));
}

/** Runs an nft script as one transaction. */
export async function runNft(script: string, options: { signal?: AbortSignal } = {}): Promise<string> {
  const { stdout } = await runCommand(["nft", "-f", "-"], {
    input: script,
    timeoutMs: 10_000,
    ...(options.signal ? { signal: options.signal } : {}),
  });
  return stdout;
}

function stderrOf(error: unknown): string {
  return error instanceof OrchestratorError ? String(error.details.stderr ?? "") : "";
}

/** Without nft no sbx rule can exist, so there is nothing to list or remove. */
function nftMissing(error: unknown): boolean {
  return (
    error instanceof OrchestratorError &&
    error.cause instanceof ArchError &&
    error.cause.code === "TOOL_MISSING"
  );
}

function hostTableScript(table: string): string {
  return `table inet ${table} {
  comment "sbx sandboxes: remove with nft delete table inet ${table}"
  map egress { type ifname : verdict; }
  set sandboxes { type ifname; }
  map published { type inet_service : ipv4_addr . inet_service; }
  chain ${REFUSE_CHAIN} {
    meta l4proto tcp reject with tcp reset
    reject with icmpx admin-prohibited
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname vmap @egress
    oifname @sandboxes ct state established,related accept
    oifname @sandboxes ct status dnat accept
    oifname @sandboxes drop
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname vmap @egress
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local dnat ip to tcp dport map @published
  }
  chain output {
    type nat hook output priority -100; policy accept;
    fib daddr type local dnat ip to tcp dport map @published
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    iifname @sandboxes oifname != @sandboxes masquerade
  }
}
`;
}

const ensured = new Map<string, Promise<void>>();

/**
 * Creates the table once per process (and per table); another orchestrator may have created it first,
 * which is fine. Turns on IPv4 forwarding, without which no sandbox packet leaves the host.
 */
export function ensureHostFirewall(table = DEFAULT_FIREWALL_TABLE): Promise<void> {
  assertTableName(table);
  let promise = ensured.get(table);
  if (!promise) {
    promise = createHostTable(table);
    ensured.set(table, promise);
    promise.catch(() => ensured.delete(table));
  }
  return promise;
}

async function createHostTable(table: string): Promise<void> {
  try {
    // `create` fails when the table exists, so base-chain rules are never added twice.
    await runNft(`create table inet ${table}\n${hostTableScript(table)}`);
  } catch (error) {
    if (!/File exists/.test(stderrOf(error))) {
      const hint = /not found|not installed/.test((error as Error).message)
        ? "; install nftables (apt-get install nftables)"
        : "";
      throw new OrchestratorError(
        "NETWORK_SETUP_FAILED",
        `creating the host firewall table inet ${table} failed: ${(error as Error).message}${hint}`,
        { cause: error },
      );
    }
  }
  await writeFile("/proc/sys/net/ipv4/ip_forward", "1\n");
}

/** Forgets that a table was created (after `deleteHostFirewall`), so the next ensure creates it again. */
export async function deleteHostFirewall(table = DEFAULT_FIREWALL_TABLE): Promise<boolean> {
  assertTableName(table);
  ensured.delete(table);
  try {
    await runNft(`delete table inet ${table}\n`);
    return true;
  } catch (error) {
    if (/No such file or directory/.test(stderrOf(error))) return false;
    throw error;
  }
}

/** The transaction that puts exactly `rules` into the sandbox's chain and hooks it up (idempotent). */
export function sandboxRulesScript(table: string, hostVethName: string, rules: readonly string[]): string {
  const chain = sandboxChainName(hostVethName);
  const veth = assertInterface(hostVethName);
  return [
    `add chain inet ${table} ${chain}`,
    `flush chain inet ${table} ${chain}`,
    ...rules.map((rule) => `add rule inet ${table} ${chain} ${rule}`),
    `add element inet ${table} egress { "${veth}" : jump ${chain} }`,
    `add element inet ${table} sandboxes { "${veth}" }`,
    "",
  ].join("\n");
}

/** Replaces the sandbox's rules atomically: packets see the old chain or the new one, never half. */
export async function applySandboxRules(
  table: string,
  hostVethName: string,
  rules: readonly string[],
  options: { signal?: AbortSignal } = {},
): Promise<void> {
  assertTableName(table);
  const script = sandboxRulesScript(table, hostVethName, rules);
  try {
    try {
      await runNft(script, options);
    } catch (error) {
      // Someone deleted the table under a running orchestrator (`nft delete table`, a firewall reload):
      // put it back once, then apply.
      if (!/No such file or directory/.test(stderrOf(error))) throw error;
      ensured.delete(table);
      await ensureHostFirewall(table);
      await runNft(script, options);
    }
  } catch (error) {
    throw new OrchestratorError(
      "NETWORK_SETUP_FAILED",
      `applying the firewall rules of ${hostVethName} in inet ${table} failed: ${(error as Error).message}`,
      { cause: error, details: { table, hostVethName, rules } },
    );
  }
}

export interface PublishedPort {
  hostPort: number;
  address: string;
  port: number;
}

function publishedRemovalLines(table: string, published: PublishedPort): string[] {
  // Adding first makes a missing entry no error; an entry of another sandbox on that port makes the
  // add fail (File exists), so the delete can never remove someone else's port.
  return [
    `add element inet ${table} published { ${published.hostPort} : ${published.address} . ${published.port} }`,
    `delete element inet ${table} published { ${published.hostPort} }`,
  ];
}

/**
 * Removes the sandbox's chain, its map entries and its published ports, in one transaction. Each
 * element is added before it is deleted, so what is already gone is no error: the call is idempotent,
 * also for a crashed run's leftovers. A missing table means nothing is left.
 */
export async function removeSandboxRules(
  table: string,
  hostVethName: string,
  published: readonly PublishedPort[] = [],
): Promise<boolean> {
  assertTableName(table);
  const chain = sandboxChainName(hostVethName);
  const veth = assertInterface(hostVethName);
  const chainLines = [
    `add chain inet ${table} ${chain}`,
    `add element inet ${table} egress { "${veth}" : jump ${chain} }`,
    `add element inet ${table} sandboxes { "${veth}" }`,
    `delete element inet ${table} egress { "${veth}" }`,
    `delete element inet ${table} sandboxes { "${veth}" }`,
    `flush chain inet ${table} ${chain}`,
    `delete chain inet ${table} ${chain}`,
  ];
  try {
    await runNft(
      [...published.flatMap((p) => publishedRemovalLines(table, p)), ...chainLines, ""].join("\n"),
    );
    return true;
  } catch (error) {
    const stderr = stderrOf(error);
    if (nftMissing(error)) return false;
    if (/No such file or directory/.test(stderr) && !(await tableExists(table))) return false;
    if (!/File exists/.test(stderr) || published.length === 0) throw error;
  }
  // A host port of ours was taken over after we released it: remove the rest one by one.
  for (const port of published) await removePublishedPort(table, port);
  await runNft([...chainLines, ""].join("\n"));
  return true;
}

export async function tableExists(table: string): Promise<boolean> {
  try {
    await runCommand(["nft", "list", "table", "inet", assertTableName(table)], { timeoutMs: 10_000 });
    return true;
  } catch (error) {
    if (nftMissing(error) || /No such file or directory/.test(stderrOf(error))) return false;
    throw error;
  }
}

export interface HostFirewallContents {
  /** Host veths with a sandbox chain. */
  sandboxChains: string[];
  /** Host veths in the egress map. */
  egress: string[];
  published: PublishedPort[];
  /** Rules in all sandbox chains together. */
  sandboxRules: number;
}

type NftJson = { nftables: Record<string, Record<string, unknown>>[] };

/** What the table holds of sandboxes: for reclaim, for `sbx doctor`, and for tests that count. */
export async function listHostFirewall(table = DEFAULT_FIREWALL_TABLE): Promise<HostFirewallContents> {
  const contents: HostFirewallContents = { sandboxChains: [], egress: [], published: [], sandboxRules: 0 };
  let stdout: string;
  try {
    ({ stdout } = await runCommand(["nft", "-j", "list", "table", "inet", assertTableName(table)], {
      timeoutMs: 10_000,
    }));
  } catch (error) {
    if (nftMissing(error) || /No such file or directory/.test(stderrOf(error))) return contents;
    throw error;
  }
  for (const entry of (JSON.parse(stdout) as NftJson).nftables) {
    const chain = entry.chain as { name: string } | undefined;
    const veth = chain ? hostVethOfChain(chain.name) : undefined;
    if (veth) contents.sandboxChains.push(veth);
    const rule = entry.rule as { chain: string } | undefined;
    if (rule && hostVethOfChain(rule.chain)) contents.sandboxRules += 1;
    const map = entry.map as { name: string; elem?: unknown[] } | undefined;
    if (map?.name === "egress") {
      for (const element of map.elem ?? []) contents.egress.push(String((element as unknown[])[0]));
    }
    if (map?.name === "published") {
      for (const element of map.elem ?? []) {
        const [hostPort, value] = element as [number, { concat: [string, number] }];
        contents.published.push({ hostPort, address: value.concat[0], port: value.concat[1] });
      }
    }
  }
  return contents;
}

/** Adds a published port; fails with NETWORK_SETUP_FAILED when another sandbox has that host port. */
export async function addPublishedPort(table: string, published: PublishedPort): Promise<void> {
  try {
    await runNft(
      `create element inet ${assertTableName(table)} published { ${published.hostPort} : ${published.address} . ${published.port} }\n`,
    );
  } catch (error) {
    throw new OrchestratorError(
      "NETWORK_SETUP_FAILED",
      `publishing host port ${published.hostPort} failed${/File exists/.test(stderrOf(error)) ? " (already published by another sandbox)" : ""}: ${(error as Error).message}`,
      { cause: error, details: { ...published } },
    );
  }
}

/** Removes a published port if it still maps to `address`/`port`; idempotent. */
export async function removePublishedPort(table: string, published: PublishedPort): Promise<void> {
  try {
    await runNft([...publishedRemovalLines(assertTableName(table), published), ""].join("\n"));
  } catch (error) {
    // Someone else's now, or the table is gone: nothing of ours is left either way.
    if (!/File exists|No such file or directory/.test(stderrOf(error))) throw error;
  }
}

/**
 * Removes sandbox chains whose host veth no longer exists, and published ports whose sandbox address
 * is no longer next to a host veth address: what a crash between record and rule left, or a build
 * network nobody recorded. Safe beside other orchestrators on the same table: a chain is only applied
 * after its veth exists and removed before it goes, and a published port only points at a live veth.
 */
export async function sweepOrphanedRules(
  table: string,
  listHost: () => Promise<{ links: readonly string[]; addresses: readonly string[] }>,
): Promise<{ chains: string[]; published: PublishedPort[] }> {
  const contents = await listHostFirewall(table);
  // The links are listed after the rules: a sandbox created in between has its veth listed too.
  const host = await listHost();
  const links = new Set(host.links);
  const hostAddresses = new Set(host.addresses);
  const chains = [...new Set([...contents.sandboxChains, ...contents.egress])].filter(
    (veth) => !links.has(veth),
  );
  const published = contents.published.filter((p) => {
    const value = parseIpv4(p.address);
    // The namespace end is .2 of its /30 and the host end .1 (address-pool.ts).
    return value === undefined || !hostAddresses.has(formatIpv4(value - 1));
  });
  for (const port of published) await removePublishedPort(table, port);
  for (const veth of chains) await removeSandboxRules(table, veth);
  return { chains, published };
}
