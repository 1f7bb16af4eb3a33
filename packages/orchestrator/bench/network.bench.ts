// Prints JSON: the cost of a sandbox's network (namespace + veth pair + TAP, then teardown) next to
// the floor measured in the same run, a bare `ip netns add` + `ip netns del`. Network setup sits on
// the sandbox-create path. Needs root; otherwise reported as skipped.
import { performance } from "node:perf_hooks";
import { benchEnvironment } from "../../../scripts/bench-environment.ts";
import { AddressPool, CONFIG_DEFAULTS, createNetworkNamespace, runCommand } from "../src/index.ts";

const ITERATIONS = 20;

function percentile(samples: number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

async function measure(run: (i: number) => Promise<void>): Promise<{ p50Ms: number; p99Ms: number }> {
  await run(-1);
  const samples: number[] = [];
  for (let i = 0; i < ITERATIONS; i++) {
    const started = performance.now();
    await run(i);
    samples.push(performance.now() - started);
  }
  return { p50Ms: percentile(samples, 50), p99Ms: percentile(samples, 99) };
}

const results: Record<string, unknown>[] = [];
if (process.getuid?.() !== 0) {
  results.push({ name: "network namespace create+teardown", skipped: "needs root for ip netns" });
} else {
  const pool = new AddressPool(CONFIG_DEFAULTS.hostAddressPool);
  const index = 16_000 + (process.pid % 300);
  const floor = await measure(async (i) => {
    const name = `sbxbench${process.pid}-f${i + 1}`;
    await runCommand(["ip", "netns", "add", name]);
    await runCommand(["ip", "netns", "del", name]);
  });
  const full = await measure(async (i) => {
    const namespace = await createNetworkNamespace({
      name: `sbxbench${process.pid}-n${i + 1}`,
      hostVethName: `sb${process.pid}b`,
      addresses: pool.addressesFor(index),
      tapName: CONFIG_DEFAULTS.tapName,
      tapAddress: CONFIG_DEFAULTS.tapAddress,
      guestAddress: CONFIG_DEFAULTS.guestAddress,
    });
    await namespace.teardown();
  });
  results.push({
    name: "network namespace create+teardown",
    iterations: ITERATIONS,
    ...full,
    baseline: "ip netns add + ip netns del",
    baselineP50Ms: floor.p50Ms,
    ratio: full.p50Ms / floor.p50Ms,
  });
}
results.push({
  name: "sandbox create (bench:create)",
  skipped: "needs @sbx/fc-client and @sbx/uffd wired into the orchestrator",
});

console.log(
  JSON.stringify({ environment: benchEnvironment({ codePath: "iproute2 via execFile" }), results }, null, 2),
);
