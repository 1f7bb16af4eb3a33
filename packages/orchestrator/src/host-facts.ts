// Facts that do not change while the process runs, read once: the host's CPU fingerprint, and per
// orchestrator state the Firecracker binary it was configured with and that binary's version.
import { type Fingerprint, hostFingerprint } from "@sbx/cpu-template";
import { firecrackerVersionOf, resolveFirecrackerBinary } from "./boot-parameters.ts";
import type { OrchestratorState } from "./orchestrator-state.ts";

let hostFingerprintOnce: Fingerprint | undefined;

export function thisHostFingerprint(): Fingerprint {
  hostFingerprintOnce ??= hostFingerprint();
  return hostFingerprintOnce;
}

export interface ResolvedFirecracker {
  path: string;
  /** `v1.14.2`, or the configured version when the binary does not say. */
  version: string;
}

const firecrackerOnce = new WeakMap<OrchestratorState, Promise<ResolvedFirecracker>>();

/** Resolved and checked once per orchestrator state, not per create; a failure is retried next time. */
export function firecrackerFor(state: OrchestratorState): Promise<ResolvedFirecracker> {
  let resolved = firecrackerOnce.get(state);
  if (!resolved) {
    resolved = resolveFirecrackerBinary(state.config).then(async ({ path }) => ({
      path,
      version: (await firecrackerVersionOf(path)) ?? state.config.firecrackerVersion,
    }));
    resolved.catch(() => firecrackerOnce.delete(state));
    firecrackerOnce.set(state, resolved);
  }
  return resolved;
}
