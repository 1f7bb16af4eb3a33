// Networks no state directory will reclaim: their owner died and its records are gone too (the
// directory deleted after a crash, a test run killed before its clean-up). Found by the owner tag on
// each host veth (network-owner.ts), on every start, whichever state directory the network belonged to.
import { type Logger, silentLogger } from "@sbx/arch";
import {
  listHostAddresses,
  listLinks,
  listTaggedLinks,
  type TaggedLink,
  teardownNetworkNamespace,
} from "./network.ts";
import { ownerState } from "./network-owner.ts";
import { type PublishedPort, sweepOrphanedRules } from "./nftables.ts";

/** One network removed because its owner is gone. */
export interface OrphanedNetwork {
  name: string;
  hostVethName: string;
  ownerPid: number;
  removedNamespace: boolean;
  removedLink: boolean;
}

export interface OrphanedNetworksReport {
  removed: OrphanedNetwork[];
  /** Per firewall table the tags named: chains and published ports whose veth was gone. */
  sweptRules: { table: string; chains: string[]; published: PublishedPort[] }[];
  /** Links whose tag names a namespace their veth peer is not in: not sbx's as tagged, left alone. */
  mismatched: string[];
  errors: string[];
}

/** The host's tagged networks by owner: running, gone (orphaned), or in another pid namespace. */
export interface TaggedNetworks {
  live: TaggedLink[];
  orphaned: TaggedLink[];
  /** Gone owners whose tag names a namespace the veth's peer is not in. */
  mismatched: TaggedLink[];
  otherPidNamespace: TaggedLink[];
}

/** Sorts the host's tagged networks by whether their owner still runs; changes nothing. */
export async function findTaggedNetworks(): Promise<TaggedNetworks> {
  const found: TaggedNetworks = { live: [], orphaned: [], mismatched: [], otherPidNamespace: [] };
  for (const link of await listTaggedLinks()) {
    const state = await ownerState(link.tag);
    if (state === "alive") found.live.push(link);
    else if (state === "unknown") found.otherPidNamespace.push(link);
    // Any root process can write an alias: act only on a tag that matches the link it is on.
    else if (!link.peerInTaggedNamespace) found.mismatched.push(link);
    else found.orphaned.push(link);
  }
  return found;
}

/**
 * Removes every tagged network whose owner process is gone, then the host rules those networks left
 * in the tables their tags name. Networks of live owners, of owners in another pid namespace (whose
 * pids mean nothing here) and links without a tag are left alone.
 */
export async function reclaimOrphanedNetworks(
  options: { logger?: Logger } = {},
): Promise<OrphanedNetworksReport> {
  const logger = options.logger ?? silentLogger;
  const report: OrphanedNetworksReport = { removed: [], sweptRules: [], mismatched: [], errors: [] };
  const tables = new Set<string>();
  const found = await findTaggedNetworks();
  report.mismatched = found.mismatched.map((link) => link.hostVethName);
  for (const link of found.orphaned) {
    try {
      const result = await teardownNetworkNamespace({
        name: link.tag.namespace,
        hostVethName: link.hostVethName,
      });
      report.removed.push({
        name: link.tag.namespace,
        hostVethName: link.hostVethName,
        ownerPid: link.tag.pid,
        removedLink: result.removedLink,
        removedNamespace: result.removedNamespace,
      });
      if (link.tag.firewallTable) tables.add(link.tag.firewallTable);
      logger.info?.({ ...link.tag, hostVethName: link.hostVethName }, "reclaim: network of a gone owner");
    } catch (error) {
      report.errors.push(`removing network ${link.tag.namespace}: ${(error as Error).message}`);
    }
  }
  for (const table of tables) {
    try {
      const swept = await sweepOrphanedRules(table, async () => ({
        links: await listLinks(),
        addresses: await listHostAddresses(),
      }));
      report.sweptRules.push({ table, ...swept });
    } catch (error) {
      report.errors.push(`sweeping table ${table}: ${(error as Error).message}`);
    }
  }
  return report;
}

/** `sbx doctor`'s line on sandbox networks: how many are in use, and any a start would remove. */
export async function checkOrphanedNetworks(): Promise<{
  status: "ok" | "warn";
  summary: string;
  fix?: string;
}> {
  const found = await findTaggedNetworks();
  const counts = `${found.live.length} in use${found.otherPidNamespace.length > 0 ? `, ${found.otherPidNamespace.length} owned from another pid namespace` : ""}`;
  if (found.orphaned.length === 0 && found.mismatched.length === 0) {
    return { status: "ok", summary: `sandbox networks: ${counts}, none whose owner is gone` };
  }
  const orphans = found.orphaned.map(
    (link) => `${link.tag.namespace} (${link.hostVethName}, owner pid ${link.tag.pid})`,
  );
  const mismatched = found.mismatched.map(
    (link) => `${link.hostVethName} names ${link.tag.namespace}, its peer is elsewhere`,
  );
  return {
    status: "warn",
    summary: [`sandbox networks: ${counts}; owner gone:`, ...orphans, ...mismatched].join("\n"),
    fix:
      found.orphaned.length > 0
        ? "the next start of any sbx orchestrator on this host removes them (or `ip netns del <namespace>`)"
        : "a tag that does not match its link is left for a person: `ip link del <veth>` if it is not in use",
  };
}
