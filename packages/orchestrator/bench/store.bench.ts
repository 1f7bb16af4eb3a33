// Prints JSON: creating a sandbox from a build that lives in a store (s3rver on loopback), against the
// same build on this host, in the same run. With FIRECRACKER_BIN (else `skipped` with the reason):
// - local: host A made the build (imported from a snapshot of the test guest, 128 MiB): create p50/p99;
// - cold: a fresh host each time (empty state directory and chunk cache): the build's small files come
//   down, then memory chunks as the guest touches them: create p50/p99, and bytes fetched / memory size;
// - warm: one more host, after a first create: its chunk cache already holds the chunks: create p50/p99.
// Every create waits for the guest's first progress line after the restore (the same for all three).
// Target: warm within 1.5x of local; cold fetches well under the guest's memory (the guest walks 48 MiB).
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { realFirecracker } from "@sbx/fc-client/testing";
import { benchEnvironment } from "../../../scripts/bench-environment.ts";
// The store package's S3-protocol test server (s3rver in a child process, on loopback).
import { TestS3Server } from "../../store/src/test-s3-server.ts";
import { createConfig } from "../src/config.ts";
import { importBuild } from "../src/import-build.ts";
import { Orchestrator } from "../src/orchestrator.ts";
import { GUEST_LINE, snapshotTestGuest } from "../src/test-guest-snapshot.ts";

const REPEATS = Number(process.env.BENCH_REPEATS ?? 7);
const MiB = 1024 * 1024;

function summary(values: number[]) {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (p: number) =>
    Number((sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0).toFixed(1));
  return { samples: sorted.length, p50Ms: at(0.5), p99Ms: at(0.99) };
}

async function main(): Promise<Record<string, unknown>> {
  const { binary, skipReason } = realFirecracker({ testGuest: true });
  if (!binary) return { skipped: skipReason };
  const dir = await mkdtemp(join(tmpdir(), "sbx-store-bench-"));
  const jail = process.env.JAILER_BIN ? { jailerBin: process.env.JAILER_BIN } : { unjailed: true };
  const host = (name: string) => createConfig({ stateDir: join(dir, name), firecrackerBin: binary, ...jail });
  await using s3 = await TestS3Server.start();
  await using store = s3.store();
  try {
    const snapshot = await snapshotTestGuest(binary, join(dir, "snapshot"));
    await using a = await Orchestrator.open(host("a"), { store });
    const build = (await importBuild(a.state, { template: "bench", ...snapshot })).id;
    await a.uploaded(build);
    const timeCreate = async (orchestrator: Orchestrator) => {
      const started = performance.now();
      const sandbox = await orchestrator.createSandbox({ build, alive: GUEST_LINE });
      const ms = performance.now() - started;
      const memory = sandbox.build.memory.sizeBytes;
      await sandbox.kill();
      return { ms, memory };
    };

    const local: number[] = [];
    for (let i = 0; i < REPEATS; i++) local.push((await timeCreate(a)).ms);

    const cold: number[] = [];
    const fetchedRatio: number[] = [];
    for (let i = 0; i < REPEATS; i++) {
      await using b = await Orchestrator.open(host(`cold-${i}`), { store });
      const { ms, memory } = await timeCreate(b);
      cold.push(ms);
      fetchedRatio.push((b.chunkCacheStats()?.fetchedBytes ?? 0) / memory);
    }

    const warm: number[] = [];
    await using w = await Orchestrator.open(host("warm"), { store });
    await timeCreate(w);
    for (let i = 0; i < REPEATS; i++) warm.push((await timeCreate(w)).ms);

    const localSummary = summary(local);
    const warmSummary = summary(warm);
    const ratio = fetchedRatio.sort((x, y) => x - y)[Math.floor(fetchedRatio.length / 2)] ?? 0;
    return {
      guestMemoryMiB: 128,
      store: "s3rver on loopback",
      local: localSummary,
      cold: {
        ...summary(cold),
        fetchedOfMemory: Number(ratio.toFixed(3)),
        fetchedMiB: Number(((ratio * 128 * MiB) / MiB).toFixed(1)),
      },
      warm: warmSummary,
      warmVsLocal: Number((warmSummary.p50Ms / localSummary.p50Ms).toFixed(2)),
      targets: { warmVsLocalAtMost: 1.5, coldFetchedOfMemoryBelow: 0.7 },
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const results = await main();
console.log(JSON.stringify({ environment: benchEnvironment({ benchmark: "store" }), results }, null, 2));
