// Prints JSON: a burst of creates of the busy test guest (each spins one vCPU) against this host, with
// admission on (default settings: 4x vCPU overcommit, a FIFO queue) and with it off (the old
// behaviour), in the same run on the same build. Bursts of 4x and 8x the host's vCPUs; the sandboxes
// created keep running until every create of the burst has ended (as in issue #25), or with
// BENCH_HOLD_MS each goes after that long, as a burst of short jobs would. Per burst: how many were
// created, how each failure ended (code and step), p50/p99 time from the call to the guest's next line
// (queueing included). Without FIRECRACKER_BIN (or /dev/kvm) it prints `skipped` with the reason.
import { mkdtempSync, rmSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { configureAndStart, launchFirecracker } from "@sbx/fc-client";
import { buildTestGuest, realFirecracker } from "@sbx/fc-client/testing";
import { benchEnvironment } from "../../../scripts/bench-environment.ts";
import { type AdmissionMode, createConfig } from "../src/config.ts";
import { OrchestratorError } from "../src/errors.ts";
import { importBuild } from "../src/import-build.ts";
import { Orchestrator } from "../src/orchestrator.ts";
import { testLaunchOptions } from "../src/test-launch-mode.ts";

const HOLD_MS = process.env.BENCH_HOLD_MS ? Number(process.env.BENCH_HOLD_MS) : undefined;
const FACTORS = (process.env.BENCH_BURST_FACTORS ?? "4,8").split(",").map(Number);
const { binary, skipReason } = realFirecracker({ testGuest: true });
const alive = /^SBX-GUEST iter=\d+ sum=/;
const percentile = (values: number[], p: number) =>
  Number(
    (
      [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.ceil(values.length * p) - 1)] ?? 0
    ).toFixed(1),
  );

/** `CAPACITY_EXCEEDED`, or `STEP_FAILED@wait-alive (WAIT_TIMEOUT)`: where and how a create ended. */
function outcomeOf(error: unknown): string {
  if (!(error instanceof OrchestratorError)) return (error as Error)?.name ?? String(error);
  const step = error.details.step ? `@${String(error.details.step)}` : "";
  const cause = (error.cause as { code?: string } | undefined)?.code;
  return `${error.code}${step}${cause ? ` (${cause})` : ""}`;
}

async function burst(stateDir: string, admission: AdmissionMode, creates: number) {
  await using orchestrator = await Orchestrator.open(
    createConfig({ stateDir, firecrackerBin: binary as string, admission, ...testLaunchOptions() }),
  );
  const started = performance.now();
  const toAlive: number[] = [];
  const failures: Record<string, number> = {};
  let settle = () => {};
  const settled = new Promise<void>((resolve) => {
    settle = resolve;
  });
  let pending = creates;
  const running = Array.from({ length: creates }, async () => {
    const called = performance.now();
    try {
      const sandbox = await orchestrator.createSandbox({ template: "busy", alive });
      toAlive.push(performance.now() - called);
      if (--pending === 0) settle();
      await (HOLD_MS === undefined ? settled : new Promise((resolve) => setTimeout(resolve, HOLD_MS)));
      await sandbox.kill();
    } catch (error) {
      if (--pending === 0) settle();
      const outcome = outcomeOf(error);
      failures[outcome] = (failures[outcome] ?? 0) + 1;
    }
  });
  await settled;
  const wallMs = Number((performance.now() - started).toFixed(0));
  const { capacity } = orchestrator.metrics();
  await Promise.all(running);
  return {
    admission,
    creates,
    created: toAlive.length,
    failures,
    toAliveP50Ms: percentile(toAlive, 0.5),
    toAliveP99Ms: percentile(toAlive, 0.99),
    queueWaitP50Ms: Number(capacity.waitMsP50.toFixed(1)),
    queueWaitP99Ms: Number(capacity.waitMsP99.toFixed(1)),
    wallMs,
  };
}

async function main(): Promise<Record<string, unknown>> {
  if (skipReason || !binary) return { skipped: skipReason };
  const dir = mkdtempSync(join(tmpdir(), "sbx-bench-burst-"));
  try {
    const guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
    const vmstate = join(dir, "vmstate");
    const memory = join(dir, "mem");
    {
      await using fc = await launchFirecracker({ binary, id: "bench-template", logPath: join(dir, "t.log") });
      await configureAndStart(fc.client, {
        "boot-source": { kernel_image_path: guest, boot_args: "console=ttyS0" },
        "machine-config": { vcpu_count: 1, mem_size_mib: 128, track_dirty_pages: true },
      });
      await fc.waitForConsole(/^SBX-GUEST iter=\d+ /, { timeoutMs: 30_000 });
      await fc.client.patchVm({ state: "Paused" });
      await fc.client.createSnapshot({
        snapshot_type: "Full",
        snapshot_path: vmstate,
        mem_file_path: memory,
      });
    }
    const stateDir = join(dir, "state");
    {
      await using orchestrator = await Orchestrator.open(
        createConfig({ stateDir, firecrackerBin: binary, ...testLaunchOptions() }),
      );
      await importBuild(orchestrator.state, { template: "busy", vmstate, memory });
    }
    const hostVcpus = availableParallelism();
    const bursts = [];
    for (const factor of FACTORS) {
      // Off first, then on: each starts on a host the one before has left quiet.
      for (const admission of ["off", "queue"] as const) {
        bursts.push({ factor, ...(await burst(stateDir, admission, factor * hostVcpus)) });
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    }
    return {
      hostVcpus,
      holdMs: HOLD_MS ?? "until the burst has ended",
      what: "creates of a 1-vCPU guest that spins its vCPU; admission off = no capacity limit (before #25)",
      bursts,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

console.log(
  JSON.stringify(
    { environment: benchEnvironment({ benchmark: "create burst" }), results: await main() },
    null,
    2,
  ),
);
