import type { SandboxAddresses } from "./address-pool.ts";
import { createNetworkNamespace, type NetworkNamespace, networkNamesFor } from "./network.ts";
import type { OrchestratorState } from "./orchestrator-state.ts";
import { newSandboxId } from "./sandbox-id.ts";
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
  sandboxDir?: string;
  record?: SandboxRecord;
  addresses?: SandboxAddresses;
  network?: NetworkNamespace;
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

/**
 * The sandbox's network namespace, TAP and veth pair. The names are recorded before they are
 * created: teardown is idempotent, so recording an intent that a crash interrupted is harmless,
 * while a namespace created but not recorded would leak.
 */
export function networkStep(): Step<SandboxCreateContext> {
  return {
    name: "network",
    async run(context, { signal }) {
      const names = networkNamesFor(context.sandboxId);
      const { network, release } = await allocateNetwork(context.state, names, {
        signal,
        // Recorded before it exists: teardown is idempotent, a namespace that exists unrecorded would leak.
        beforeCreate: (addressIndex) =>
          updateSandboxRecord(context, (record) => ({
            ...record,
            networkNamespace: { ...names, addressIndex },
          })).then(() => undefined),
      });
      context.addresses = network.addresses;
      context.network = network;
      return release;
    },
  };
}

/**
 * A network namespace with the sandbox TAP, and a /30 from the address pool for its veth pair. The
 * address goes back to the pool when creating fails or `release` runs (after teardown).
 */
export async function allocateNetwork(
  state: OrchestratorState,
  names: { name: string; hostVethName: string },
  options: { signal?: AbortSignal; beforeCreate?: (addressIndex: number) => Promise<void> } = {},
): Promise<{ network: NetworkNamespace; release: () => Promise<void> }> {
  const { addressPool, config } = state;
  const addresses = addressPool.allocate();
  let network: NetworkNamespace;
  try {
    await options.beforeCreate?.(addresses.index);
    network = await createNetworkNamespace({
      ...names,
      addresses,
      tapName: config.tapName,
      tapAddress: config.tapAddress,
      guestAddress: config.guestAddress,
      ...(options.signal ? { signal: options.signal } : {}),
    });
  } catch (error) {
    addressPool.release(addresses.index);
    throw error;
  }
  return {
    network,
    release: async () => {
      await network.teardown();
      addressPool.release(addresses.index);
    },
  };
}
