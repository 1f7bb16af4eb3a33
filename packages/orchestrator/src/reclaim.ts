import { rm } from "node:fs/promises";
import { type Logger, silentLogger } from "@sbx/arch";
import { type RemovedJails, removeCgroupDirs } from "@sbx/fc-client";
import { AddressPool } from "./address-pool.ts";
import { CONFIG_DEFAULTS } from "./config.ts";
import type { Ipv4Cidr } from "./ipv4.ts";
import {
  type PoolRecord,
  type ReclaimedPoolNetwork,
  readNetworkRecord,
  reclaimNetworkPool,
} from "./netns-pool.ts";
import { listHostAddresses, listLinks, teardownNetworkNamespace } from "./network.ts";
import { listHostFirewall, type PublishedPort, removeSandboxRules, sweepOrphanedRules } from "./nftables.ts";
import { type OrphanedNetworksReport, reclaimOrphanedNetworks } from "./orphaned-networks.ts";
import { checkProcessIdentity, type TerminateResult, terminateRecordedProcess } from "./process-identity.ts";
import type { InvalidRecord, SandboxProcessRole, SandboxRecord, StateDirectory } from "./state-dir.ts";
import type { DeletedStateDirectory } from "./state-registry.ts";

export interface ReclaimedSandbox {
  id: string;
  processes: { role: SandboxProcessRole; pid: number; result: TerminateResult }[];
  removedSockets: string[];
  network?: { name: string; removedRules: boolean; removedLink: boolean; removedNamespace: boolean };
  /** The jail of a jailed VM: its directory (chroot) and cgroups. */
  jail?: { directory: string; removedCgroups: string[] };
  removedDirectory: boolean;
  errors: string[];
}

export interface ReclaimReport {
  reclaimed: ReclaimedSandbox[];
  /** Sandboxes whose owner is still running: not touched. */
  skipped: { id: string; reason: string }[];
  /** Directories without a readable record: left for a human, since nothing says what they own. */
  invalid: InvalidRecord[];
  removedTempFiles: string[];
  /** Prepared (pooled) networks of a crashed run. */
  networkPool: ReclaimedPoolNetwork[];
  /** Networks of any state directory whose owner process is gone (by the owner tag on the host veth). */
  orphanedNetworks: OrphanedNetworksReport;
  /** Host firewall entries whose sandbox is gone although no record named them. */
  sweptRules: { chains: string[]; published: PublishedPort[] };
  /** Jails of other state directories that were deleted after a crash (set by openOrchestratorState). */
  deletedStateDirs?: DeletedStateDirectory[];
  /** Jails (chroots, cgroups) of VMs no record named, e.g. a template build's (set by openOrchestratorState). */
  staleJails?: RemovedJails;
}

export interface ReclaimOptions {
  /** SIGTERM → SIGKILL grace per process; default 2 s. */
  graceMs?: number;
  logger?: Logger;
  /** The host firewall table and address pool the sandboxes were created with (config). */
  firewallTable?: string;
  hostAddressPool?: Ipv4Cidr;
}

// Firecracker first: a page-fault server must never go before the VM it serves, or the VM hangs.
const KILL_ORDER: readonly SandboxProcessRole[] = ["firecracker", "helper", "page-fault-server"];

/** Cleans one sandbox from its record: processes (verified by identity), sockets, network, files. */
export async function reclaimSandbox(
  stateDir: StateDirectory,
  record: SandboxRecord,
  options: ReclaimOptions = {},
): Promise<ReclaimedSandbox> {
  const logger = options.logger ?? silentLogger;
  const result: ReclaimedSandbox = {
    id: record.id,
    processes: [],
    removedSockets: [],
    removedDirectory: false,
    errors: [],
  };
  const ordered = [...record.processes].sort(
    (a, b) => KILL_ORDER.indexOf(a.role) - KILL_ORDER.indexOf(b.role),
  );
  for (const { role, identity } of ordered) {
    try {
      const outcome = await terminateRecordedProcess(identity, {
        ...(options.graceMs !== undefined ? { graceMs: options.graceMs } : {}),
      });
      result.processes.push({ role, pid: identity.pid, result: outcome });
      if (outcome.outcome === "survived") result.errors.push(outcome.reason);
      logger.info?.({ id: record.id, role, pid: identity.pid, ...outcome }, "reclaim: process");
    } catch (error) {
      result.errors.push(`stopping ${role} pid ${identity.pid}: ${(error as Error).message}`);
    }
  }
  for (const socket of record.sockets) {
    try {
      await rm(socket);
      result.removedSockets.push(socket);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") {
        result.errors.push(`removing ${socket}: ${(error as Error).message}`);
      }
    }
  }
  // The VM is gone (its processes above, or with its owner): its chroot and cgroups go too.
  if (record.jail && !result.processes.some((p) => p.result.outcome === "survived")) {
    try {
      await rm(record.jail.directory, { recursive: true, force: true });
      const left = await removeCgroupDirs(record.jail.cgroups);
      for (const dir of left) result.errors.push(`cgroup ${dir} still has tasks`);
      result.jail = {
        directory: record.jail.directory,
        removedCgroups: record.jail.cgroups.filter((dir) => !left.includes(dir)),
      };
    } catch (error) {
      result.errors.push(`removing the jail ${record.jail.directory}: ${(error as Error).message}`);
    }
  }
  // A pooled network handed over is in network.json until the record is next rewritten.
  let handedOver: PoolRecord | undefined;
  if (!record.networkNamespace) {
    try {
      handedOver = await readNetworkRecord(stateDir.sandboxDir(record.id));
    } catch (error) {
      result.errors.push(`reading the network record of ${record.id}: ${(error as Error).message}`);
    }
  }
  const networkNamespace = record.networkNamespace ?? handedOver;
  if (networkNamespace) {
    try {
      const table = handedOver?.firewallTable ?? options.firewallTable ?? CONFIG_DEFAULTS.firewallTable;
      // Published host ports point at the namespace's address: remove those of this sandbox only.
      const namespaceAddress = new AddressPool(
        options.hostAddressPool ?? CONFIG_DEFAULTS.hostAddressPool,
      ).addressesFor(networkNamespace.addressIndex).namespaceAddress;
      const published = (await listHostFirewall(table)).published.filter(
        (p) => p.address === namespaceAddress,
      );
      const removedRules = await removeSandboxRules(table, networkNamespace.hostVethName, published);
      result.network = {
        name: networkNamespace.name,
        removedRules,
        ...(await teardownNetworkNamespace(networkNamespace)),
      };
    } catch (error) {
      result.errors.push(`removing network namespace ${networkNamespace.name}: ${(error as Error).message}`);
    }
  }
  if (result.errors.length === 0) {
    await stateDir.removeSandbox(record.id);
    result.removedDirectory = true;
  } else {
    logger.warn?.({ id: record.id, errors: result.errors }, "reclaim: sandbox left in place");
  }
  return result;
}

/**
 * Removes what a crashed previous run left in the state directory: for every sandbox whose owning
 * orchestrator is gone, stop its recorded processes (only if /proc still shows the same start time
 * and command line), remove its sockets, host firewall rules, network namespace and directory; then
 * the prepared networks of its network pool; then the networks of any state directory whose owner
 * process is gone (their host veth's owner tag). Run it on start, after taking the state directory's lock.
 */
export async function reclaim(
  stateDir: StateDirectory,
  options: ReclaimOptions = {},
): Promise<ReclaimReport> {
  const { records, invalid } = await stateDir.listSandboxes();
  const report: ReclaimReport = {
    reclaimed: [],
    skipped: [],
    invalid,
    removedTempFiles: [],
    networkPool: [],
    orphanedNetworks: { removed: [], sweptRules: [], mismatched: [], errors: [] },
    sweptRules: { chains: [], published: [] },
  };
  for (const record of records) {
    const owner = await checkProcessIdentity(record.owner);
    if (owner.same) {
      report.skipped.push({
        id: record.id,
        reason: `owned by running process ${record.owner.pid} (${record.owner.cmdline.join(" ")})`,
      });
      continue;
    }
    report.reclaimed.push(await reclaimSandbox(stateDir, record, options));
  }
  report.networkPool = await reclaimNetworkPool(stateDir.root, {
    ...(options.logger ? { logger: options.logger } : {}),
  });
  // After the records: a network a record names is reclaimed with what the record knows (its ports).
  try {
    report.orphanedNetworks = await reclaimOrphanedNetworks({
      ...(options.logger ? { logger: options.logger } : {}),
    });
  } catch (error) {
    report.orphanedNetworks.errors.push(`listing tagged networks: ${(error as Error).message}`);
  }
  try {
    report.sweptRules = await sweepOrphanedRules(
      options.firewallTable ?? CONFIG_DEFAULTS.firewallTable,
      async () => ({
        links: await listLinks(),
        addresses: await listHostAddresses(),
      }),
    );
  } catch (error) {
    (options.logger ?? silentLogger).warn?.(
      { error: (error as Error).message },
      "reclaim: sweeping orphaned rules failed",
    );
  }
  report.removedTempFiles = await stateDir.removeTempFiles();
  return report;
}
