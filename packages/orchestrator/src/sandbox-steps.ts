import { rename } from "node:fs/promises";
import { join } from "node:path";
import type { SandboxAddresses } from "./address-pool.ts";
import type { EgressPolicy } from "./egress-policy.ts";
import {
  createSandboxNetwork,
  NETWORK_RECORD_FILE,
  type NetworkPool,
  releaseSandboxNetwork,
} from "./netns-pool.ts";
import { type NetworkNamespace, networkNamesFor } from "./network.ts";
import type { OrchestratorState } from "./orchestrator-state.ts";
import { newSandboxId } from "./sandbox-id.ts";
import type { SandboxNetwork } from "./sandbox-network.ts";
import type { SandboxRecord } from "./state-dir.ts";
import type { Step } from "./steps.ts";

/**
 * What the sandbox-create steps share. Steps that need more (the Firecracker handle, the page-fault
 * server) extend it; the state record is the crash-safety contract between them.
 */
export interface SandboxCreateContext {
  state: OrchestratorState;
  sandboxId: string;
  template?: string;
  /** The build the sandbox maps: its record pins it against gc. */
  buildId?: string;
  sandboxDir?: string;
  record?: SandboxRecord;
  addresses?: SandboxAddresses;
  network?: NetworkNamespace;
  /** Namespace, host rules, exposed ports: `sandboxNetwork.expose(port)`. */
  sandboxNetwork?: SandboxNetwork;
  /** The policy the network step puts in force (template's combined with the create's). */
  egressPolicy?: EgressPolicy;
  /** The orchestrator's pool of prepared networks; the network step takes from it when set. */
  networkPool?: NetworkPool;
}

export function newSandboxCreateContext(
  state: OrchestratorState,
  options: { sandboxId?: string; template?: string } = {},
): SandboxCreateContext {
  return {
    state,
    sandboxId: options.sandboxId ?? newSandboxId(),
    ...(options.template === undefined ? {} : { template: options.template }),
  };
}

/** Rewrites the sandbox's record atomically with `change` applied. */
export async function updateSandboxRecord(
  context: SandboxCreateContext,
  change: (record: SandboxRecord) => SandboxRecord,
): Promise<SandboxRecord> {
  if (!context.record) throw new Error("the state-record step must run before steps that update the record");
  const next = change(context.record);
  await context.state.stateDir.writeRecord(next);
  context.record = next;
  return next;
}

/**
 * Creates the sandbox's directory and its record (state "creating") before anything else exists,
 * so a crash at any later point leaves a record that reclaim can clean up from. Cleanup removes it.
 */
export function stateRecordStep(): Step<SandboxCreateContext> {
  return {
    name: "state-record",
    async run(context) {
      const { stateDir, self } = context.state;
      context.sandboxDir = await stateDir.createSandboxDir(context.sandboxId);
      const record: SandboxRecord = {
        schemaVersion: 1,
        id: context.sandboxId,
        createdAt: new Date().toISOString(),
        state: "creating",
        ...(context.template === undefined ? {} : { template: context.template }),
        ...(context.buildId === undefined ? {} : { build: context.buildId }),
        owner: self,
        processes: [],
        sockets: [],
      };
      try {
        await stateDir.writeRecord(record);
      } catch (error) {
        await stateDir.removeSandbox(context.sandboxId);
        throw error;
      }
      context.record = record;
      return () => stateDir.removeSandbox(context.sandboxId);
    },
  };
}

export interface NetworkStepOptions {
  /** Take prepared networks from this pool (default `context.networkPool`); without one each is created here. */
  pool?: NetworkPool;
}

/**
 * The sandbox's network: namespace, TAP, veth pair, NAT and its host firewall chain, then its egress
 * policy (`context.egressPolicy`, default allow with the default denies). The names are recorded
 * before they are created: teardown is idempotent, so recording an intent that a crash interrupted is
 * harmless, while a namespace created but not recorded would leak. A pooled network is recorded by
 * its pool until this step has written it into the sandbox's record.
 */
export function networkStep(options: NetworkStepOptions = {}): Step<SandboxCreateContext> {
  return {
    name: "network",
    async run(context, { signal }) {
      const record = (network: { name: string; hostVethName: string }, addressIndex: number) =>
        updateSandboxRecord(context, (current) => ({
          ...current,
          networkNamespace: { name: network.name, hostVethName: network.hostVethName, addressIndex },
        })).then(() => undefined);
      let sandboxNetwork: SandboxNetwork;
      let release: () => Promise<void>;
      const pool = options.pool ?? context.networkPool;
      if (pool) {
        ({ network: sandboxNetwork } = await pool.take({
          claim: async (network, poolRecord) => {
            if (!context.sandboxDir || !context.record) return record(network, network.addresses.index);
            // A rename instead of a record rewrite (two fsyncs) is the warm path's whole cost. The
            // record holds the network in memory now and on disk from the next step's write on.
            await rename(poolRecord, join(context.sandboxDir, NETWORK_RECORD_FILE));
            context.record = {
              ...context.record,
              networkNamespace: {
                name: network.name,
                hostVethName: network.hostVethName,
                addressIndex: network.addresses.index,
              },
            };
          },
          ...(context.egressPolicy ? { policy: context.egressPolicy } : {}),
          signal,
        }));
        release = () => pool.release(sandboxNetwork);
      } else {
        const names = networkNamesFor(context.sandboxId);
        const allocated = await allocateNetwork(context.state, names, {
          signal,
          ...(context.egressPolicy ? { policy: context.egressPolicy } : {}),
          beforeCreate: (addressIndex) => record(names, addressIndex),
        });
        sandboxNetwork = allocated.sandboxNetwork;
        release = allocated.release;
      }
      context.addresses = sandboxNetwork.addresses;
      context.network = sandboxNetwork.namespace;
      context.sandboxNetwork = sandboxNetwork;
      return release;
    },
  };
}

/**
 * A network namespace with the sandbox TAP, NAT and host rules (egress `policy`, default allow with
 * the default denies), and a /30 from the address pool for its veth pair. The address goes back to
 * the pool when creating fails or `release` runs (after teardown).
 */
export async function allocateNetwork(
  state: OrchestratorState,
  names: { name: string; hostVethName: string },
  options: {
    signal?: AbortSignal;
    policy?: EgressPolicy;
    beforeCreate?: (addressIndex: number) => Promise<void>;
  } = {},
): Promise<{ network: NetworkNamespace; sandboxNetwork: SandboxNetwork; release: () => Promise<void> }> {
  const sandboxNetwork = await createSandboxNetwork(state, names, options);
  return {
    network: sandboxNetwork.namespace,
    sandboxNetwork,
    release: () => releaseSandboxNetwork(state, sandboxNetwork),
  };
}
