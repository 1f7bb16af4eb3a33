// Prints JSON: the network step of a sandbox create (namespace, veth pair, TAP, namespace NAT, host
// firewall chain with the egress policy, state record) taken from a warm pool of prepared networks
// against the same step creating its network on the spot, both measured in this run; the same for 20
// concurrent creates; and the floor, a bare `ip netns add` + `ip netns del`. Target: the warm step at
// most 5 ms p50. Needs root and nft; otherwise each result says `skipped` and why.
import { execFileSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { benchEnvironment } from "../../../scripts/bench-environment.ts";
import { createConfig } from "../src/config.ts";
import { parseEgressPolicy } from "../src/egress-policy.ts";
import { runCommand } from "../src/exec.ts";
import { NetworkPool } from "../src/netns-pool.ts";
import { deleteHostFirewall, listHostFirewall } from "../src/nftables.ts";
import { type OrchestratorState, openOrchestratorState } from "../src/orchestrator-state.ts";
import {
  networkStep,
  newSandboxCreateContext,
  type SandboxCreateContext,
  stateRecordStep,
} from "../src/sandbox-steps.ts";

const ITERATIONS = Number(process.env.BENCH_NETWORK_ITERATIONS ?? 30);
const CONCURRENT = 20;

function percentile(samples: number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  const value = sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
  return Number(value.toFixed(2));
}

function summary(samples: number[]) {
  return { samples: samples.length, p50Ms: percentile(samples, 50), p99Ms: percentile(samples, 99) };
}

function skipReason(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root for ip netns and nft";
  try {
    execFileSync("nft", ["--version"], { stdio: "ignore" });
  } catch {
    return "needs nftables (nft)";
  }
  return undefined;
}

/** One create's network step, timed alone: the record step before it and the cleanup after are not. */
async function timedNetworkStep(
  state: OrchestratorState,
  pool: NetworkPool | undefined,
  policy?: ReturnType<typeof parseEgressPolicy>,
): Promise<{ ms: number; cleanup: () => Promise<void> }> {
  const context: SandboxCreateContext = newSandboxCreateContext(state);
  if (policy) context.egressPolicy = policy;
  const removeRecord = await stateRecordStep().run(context, { signal: new AbortController().signal });
  const started = performance.now();
  const release = await networkStep(pool ? { pool } : {}).run(context, {
    signal: new AbortController().signal,
  });
  const ms = performance.now() - started;
  return {
    ms,
    cleanup: async () => {
      if (typeof release === "function") await release();
      if (typeof removeRecord === "function") await removeRecord();
    },
  };
}

async function sequential(
  state: OrchestratorState,
  pool: NetworkPool | undefined,
  policy?: ReturnType<typeof parseEgressPolicy>,
) {
  const samples: number[] = [];
  for (let i = -1; i < ITERATIONS; i++) {
    // Between creates the pool refills, as it does between real creates; not timed.
    if (pool) await pool.filled();
    const { ms, cleanup } = await timedNetworkStep(state, pool, policy);
    if (i >= 0) samples.push(ms);
    await cleanup();
  }
  return summary(samples);
}

async function concurrent(state: OrchestratorState, pool: NetworkPool | undefined) {
  if (pool) await pool.filled();
  const started = performance.now();
  const runs = await Promise.all(Array.from({ length: CONCURRENT }, () => timedNetworkStep(state, pool)));
  const wallMs = performance.now() - started;
  await Promise.all(runs.map((run) => run.cleanup()));
  return { creates: CONCURRENT, wallMs: Number(wallMs.toFixed(1)), ...summary(runs.map((r) => r.ms)) };
}

async function floor() {
  const samples: number[] = [];
  for (let i = 0; i < ITERATIONS; i++) {
    const name = `sbxbench${process.pid}-f${i}`;
    const started = performance.now();
    await runCommand(["ip", "netns", "add", name]);
    await runCommand(["ip", "netns", "del", name]);
    samples.push(performance.now() - started);
  }
  return summary(samples);
}

async function main(): Promise<Record<string, unknown>[]> {
  const skipped = skipReason();
  if (skipped) return [{ name: "network step", skipped }];
  const root = await mkdtemp(join(tmpdir(), "sbx-bench-network-"));
  const table = `sbxbench${process.pid % 100_000}`;
  const config = createConfig({
    stateDir: root,
    hostAddressPool: "10.203.0.0/16",
    firewallTable: table,
    // Never reached: the bench sends no traffic.
    dnsServers: ["198.18.255.53"],
  });
  const state = await openOrchestratorState(config);
  const pool = new NetworkPool(state, { size: CONCURRENT, namePrefix: `sbxb${process.pid % 10_000}` });
  try {
    const cold = await sequential(state, undefined);
    const warm = await sequential(state, pool);
    const warmDeny = await sequential(
      state,
      pool,
      parseEgressPolicy({ default: "deny", allow: ["198.18.0.0/15"] }),
    );
    const coldConcurrent = await concurrent(state, undefined);
    const warmConcurrent = await concurrent(state, pool);
    await pool.close();
    const left = await listHostFirewall(table);
    return [
      {
        name: "network step, warm pool (default policy)",
        ...warm,
        baseline: "network step creating its network (same run)",
        baselineP50Ms: cold.p50Ms,
        speedup: Number((cold.p50Ms / warm.p50Ms).toFixed(1)),
        targetP50Ms: 5,
        meetsTarget: warm.p50Ms <= 5,
      },
      {
        name: "network step, warm pool, deny-all policy with an allow list (one nft transaction)",
        ...warmDeny,
      },
      { name: "network step, no pool", ...cold },
      {
        name: `network step, ${CONCURRENT} concurrent creates, warm pool`,
        ...warmConcurrent,
        baseline: `${CONCURRENT} concurrent creates without a pool (same run)`,
        baselineWallMs: coldConcurrent.wallMs,
        baselineP50Ms: coldConcurrent.p50Ms,
      },
      { name: `network step, ${CONCURRENT} concurrent creates, no pool`, ...coldConcurrent },
      { name: "floor: ip netns add + ip netns del", ...(await floor()) },
      {
        name: "left behind in the host table after the run",
        chains: left.sandboxChains.length,
        rules: left.sandboxRules,
      },
    ];
  } finally {
    await pool.close().catch(() => undefined);
    await state.close();
    await deleteHostFirewall(table);
    await rm(root, { recursive: true, force: true });
  }
}

const results = await main();
console.log(
  JSON.stringify(
    { environment: benchEnvironment({ codePath: "iproute2 + nft via execFile; pool in process" }), results },
    null,
    2,
  ),
);
