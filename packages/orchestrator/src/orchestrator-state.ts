import { type Logger, silentLogger } from "@sbx/arch";
import { AddressPool } from "./address-pool.ts";
import { BuildLeases } from "./builds.ts";
import type { OrchestratorConfig } from "./config.ts";
import { OrchestratorError } from "./errors.ts";
import { removeJailParentCgroups, sweepStaleJails } from "./jail-plan.ts";
import { ConcurrencyLimiter } from "./limiter.ts";
import { type ProcessIdentity, processIdentity } from "./process-identity.ts";
import { type ReclaimReport, reclaim } from "./reclaim.ts";
import { StateDirectory } from "./state-dir.ts";
import {
  registerStateDirectory,
  sweepDeletedStateDirectories,
  unregisterStateDirectory,
} from "./state-registry.ts";
import { parseUidRange, UidPool } from "./uid-pool.ts";

/** The host-side state an orchestrator process owns while it runs. */
export interface OrchestratorState extends AsyncDisposable {
  config: OrchestratorConfig;
  stateDir: StateDirectory;
  /** This process, as recorded as the owner of every sandbox it creates. */
  self: ProcessIdentity;
  addressPool: AddressPool;
  /** The uids/gids jailed VMs run as: those sandbox records hold are never handed out again. */
  uidPool: UidPool;
  createLimiter: ConcurrencyLimiter;
  buildLimiter: ConcurrencyLimiter;
  /** Builds this process uses that no file pins yet (creates and builds in flight): gc keeps them. */
  leases: BuildLeases;
  /** What the start-up reclaim removed from a crashed previous run. */
  reclaimed: ReclaimReport;
  /** Releases the state directory's lock (sandboxes must be disposed before). */
  close(): Promise<void>;
}

/**
 * Start-up: open the state directory, take its lock (one orchestrator per directory), reclaim what a
 * crashed previous run left there, and set up the address pool and concurrency limits.
 */
export async function openOrchestratorState(
  config: OrchestratorConfig,
  options: { logger?: Logger; graceMs?: number } = {},
): Promise<OrchestratorState> {
  const logger = options.logger ?? silentLogger;
  const stateDir = await StateDirectory.open(config.stateDir);
  const self = await processIdentity(process.pid);
  if (!self) throw new OrchestratorError("INVALID_OPTIONS", "cannot read this process's identity from /proc");
  const lock = await stateDir.acquireLock(self);
  try {
    const reclaimed = await reclaim(stateDir, {
      logger,
      firewallTable: config.firewallTable,
      hostAddressPool: config.addresses.hostAddressPool,
      ...(options.graceMs === undefined ? {} : { graceMs: options.graceMs }),
    });
    // Jails of VMs that died with a crashed owner (template builds have no record to reclaim from).
    reclaimed.staleJails = await sweepStaleJails(config, logger);
    // Jails of other state directories deleted after a crash: nobody else would ever find them.
    reclaimed.deletedStateDirs = await sweepDeletedStateDirectories(config, { logger });
    await registerStateDirectory(config).catch((error: Error) =>
      logger.warn?.({ error: error.message }, "could not record this state directory in the state registry"),
    );
    const orphans = reclaimed.orphanedNetworks;
    if (
      reclaimed.reclaimed.length > 0 ||
      reclaimed.invalid.length > 0 ||
      orphans.removed.length + orphans.mismatched.length + orphans.errors.length > 0
    ) {
      logger.warn?.(
        {
          reclaimed: reclaimed.reclaimed.map((r) => r.id),
          invalid: reclaimed.invalid.map((i) => i.path),
          orphanedNetworks: orphans.removed.map((n) => n.name),
          ...(orphans.mismatched.length > 0 ? { mismatchedNetworkTags: orphans.mismatched } : {}),
          ...(orphans.errors.length > 0 ? { orphanedNetworkErrors: orphans.errors } : {}),
        },
        "reclaimed sandboxes of a previous run",
      );
    }
    const addressPool = new AddressPool(config.addresses.hostAddressPool);
    // Sandboxes still listed after reclaim (a process survived, a teardown failed) may hold their addresses.
    const uidPool = new UidPool(parseUidRange(config.jailUidRange));
    const { records } = await stateDir.listSandboxes();
    for (const record of records) {
      if (record.networkNamespace) addressPool.reserve(record.networkNamespace.addressIndex);
      if (record.jail) uidPool.reserve(record.jail.uid);
    }
    let closed = false;
    const close = async () => {
      if (closed) return;
      closed = true;
      // The record stays while a jail cgroup does: it is how a later start finds it if this
      // directory is deleted.
      if ((await removeJailParentCgroups(config)).length === 0) {
        await unregisterStateDirectory(config).catch(() => undefined);
      }
      await lock.release();
    };
    return {
      config,
      stateDir,
      self,
      addressPool,
      uidPool,
      createLimiter: new ConcurrencyLimiter(config.maxConcurrentCreates),
      buildLimiter: new ConcurrencyLimiter(config.maxConcurrentBuilds),
      leases: new BuildLeases(),
      reclaimed,
      close,
      [Symbol.asyncDispose]: close,
    };
  } catch (error) {
    await lock.release();
    throw error;
  }
}
