// Builds that move between hosts: two state directories on one machine are two hosts sharing a build
// store. Without Firecracker, a build goes up from A and comes down on B file for file; with it, a
// sandbox built on A runs on B, pauses there, and resumes on A with the guest's checksum going on.
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openFdTargets } from "@sbx/arch/testing";
import { realFirecracker } from "@sbx/fc-client/testing";
import { type BuildStore, FilesystemStore, MEMORY_CHUNK_TABLE_FILE } from "@sbx/store";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
// The store package's own S3-protocol test server (s3rver in a child process, on loopback).
import { TestS3Server } from "../../store/src/test-s3-server.ts";
import { buildDir, readBuild } from "./builds.ts";
import { createConfig, type OrchestratorConfig } from "./config.ts";
import { importBuild } from "./import-build.ts";
import { Orchestrator } from "./orchestrator.ts";
import { openOrchestratorState } from "./orchestrator-state.ts";
import { ensureLocalBuild } from "./store-sync.ts";
import { verifyTemplateFiles } from "./template-drift.ts";
import { BUILD_FILES } from "./template-manifest.ts";
import {
  expectChecksumContinues,
  GUEST_LINE,
  lastIteration,
  snapshotTestGuest,
} from "./test-guest-snapshot.ts";

const { binary: firecrackerBin, skipReason } = realFirecracker({ testGuest: true });
/** Jailed where this machine has a jailer (JAILER_BIN), else the explicit opt-out. */
const jail = process.env.JAILER_BIN ? { jailerBin: process.env.JAILER_BIN } : { unjailed: true };

describe("builds that move between hosts", () => {
  let dir: string;
  let store: FilesystemStore;
  let hostA: OrchestratorConfig;
  let hostB: OrchestratorConfig;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sbx-two-hosts-"));
    store = new FilesystemStore({ directory: join(dir, "store") });
    await mkdir(join(dir, "store"));
    const firecracker = firecrackerBin ?? "/bin/true";
    hostA = createConfig({ stateDir: join(dir, "a"), firecrackerBin: firecracker, ...jail });
    hostB = createConfig({ stateDir: join(dir, "b"), firecrackerBin: firecracker, ...jail });
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("a build uploaded from A comes down on B file for file; an unknown one is a typed refusal", async () => {
    await writeFile(join(dir, "vmstate"), randomBytes(1000));
    await writeFile(join(dir, "mem"), randomBytes(1024 * 1024));
    let id: string;
    {
      await using a = await Orchestrator.open(hostA, { store });
      id = (
        await importBuild(a.state, {
          template: "moved",
          vmstate: join(dir, "vmstate"),
          memory: join(dir, "mem"),
          firecrackerVersion: "v1.14.2",
        })
      ).id;
      await a.uploaded(id);
    }
    await using b = await openOrchestratorState(hostB);
    await ensureLocalBuild(b, store, id);
    const there = await readBuild(hostB, id);
    expect(there).toEqual(await readBuild(hostA, id));
    expect(await verifyTemplateFiles(buildDir(hostB, id), there, { digests: true })).toEqual([]);
    const missing = await ensureLocalBuild(b, store, "01ZZZZZZZZZZZZZZZZZZZZZZZZ").catch((e: unknown) => e);
    expect(missing).toMatchObject({
      code: "BUILD_NOT_FOUND",
      details: { build: "01ZZZZZZZZZZZZZZZZZZZZZZZZ" },
    });
    expect(readdirSync(join(hostB.stateDir, "builds")).filter((name) => name.startsWith("."))).toEqual([]);
  });

  it.skipIf(skipReason !== undefined)(
    `a sandbox built on A runs on B, pauses there, and resumes on A${skipReason ? ` (skipped: ${skipReason})` : ""}`,
    async () => {
      const snapshot = await snapshotTestGuest(firecrackerBin!, join(dir, "t"));
      let template: string;
      {
        await using a = await Orchestrator.open(hostA, { store });
        template = (await importBuild(a.state, { template: "guest", ...snapshot })).id;
        await a.uploaded(template);
      }
      // Host A is closed: B has only the store.
      let pausedBuild: string;
      let pausedAt: number;
      {
        await using b = await Orchestrator.open(hostB, { store });
        const sandbox = await b.createSandbox({ build: template, alive: GUEST_LINE });
        expect(existsSync(buildDir(hostB, template))).toBe(true);
        const since = sandbox.firecracker.console.position;
        await sandbox.firecracker.waitForConsole(GUEST_LINE, { timeoutMs: 30_000, since });
        pausedAt = lastIteration(sandbox.firecracker);
        const paused = await sandbox.pause();
        pausedBuild = paused.build;
        await b.uploaded(pausedBuild);
      }
      await using a = await Orchestrator.open(hostA, { store });
      await using resumed = await a.createSandbox({ build: pausedBuild, alive: GUEST_LINE });
      await expectChecksumContinues(resumed.firecracker, pausedAt);
    },
    180_000,
  );
});

/** Every process whose working directory is under `root` (Firecracker runs in its sandbox's directory). */
function processesUnder(root: string): number[] {
  return readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        return readlinkSync(`/proc/${pid}/cwd`).startsWith(root);
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** The chunk cache holds only whole, verified chunks: no temp file, no lock, every name its sha256. */
function expectCacheClean(directory: string): number {
  expect(readdirSync(join(directory, "tmp"))).toEqual([]);
  expect(readdirSync(join(directory, "locks"))).toEqual([]);
  const chunks = readdirSync(join(directory, "chunks"));
  for (const name of chunks)
    expect(
      createHash("sha256")
        .update(readFileSync(join(directory, "chunks", name)))
        .digest("hex"),
    ).toBe(name);
  return chunks.length;
}

/** `inner`, but `onChunk` runs before each memory chunk is read from it. */
function withChunkHook(inner: BuildStore, onChunk: (key: string) => Promise<void>): BuildStore {
  return {
    description: inner.description,
    put: (key, body, options) => inner.put(key, body, options),
    get: async (key, options) => {
      if (key.includes(`/${BUILD_FILES.memory}.chunks/`)) await onChunk(key);
      return inner.get(key, options);
    },
    head: (key, options) => inner.head(key, options),
    list: (prefix, options) => inner.list(prefix, options),
    delete: (key, options) => inner.delete(key, options),
    [Symbol.asyncDispose]: () => inner[Symbol.asyncDispose](),
  };
}

describe.skipIf(skipReason !== undefined)(
  `lazy memory from an S3 server${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let dir: string;
    let s3: TestS3Server;
    let template: string;
    const host = (name: string) =>
      createConfig({ stateDir: join(dir, name), firecrackerBin: firecrackerBin as string, ...jail });

    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "sbx-lazy-hosts-"));
      s3 = await TestS3Server.start();
      const snapshot = await snapshotTestGuest(firecrackerBin as string, join(dir, "t"));
      await using store = s3.store();
      await using a = await Orchestrator.open(host("a"), { store });
      template = (await importBuild(a.state, { template: "guest", ...snapshot })).id;
      await a.uploaded(template);
    }, 120_000);
    afterAll(async () => {
      await s3?.[Symbol.asyncDispose]();
      await rm(dir, { recursive: true, force: true });
    });

    it("B runs A's build fetching only the chunks its guest touches; B's pause resumes on A", async () => {
      let pausedBuild: string;
      let pausedAt: number;
      {
        await using store = s3.store();
        await using b = await Orchestrator.open(host("b"), { store });
        const sandbox = await b.createSandbox({ build: template, alive: GUEST_LINE });
        // Lazy: the memory stayed in the store, only its chunk table came down.
        expect(existsSync(join(buildDir(host("b"), template), BUILD_FILES.memory))).toBe(false);
        expect(existsSync(join(buildDir(host("b"), template), MEMORY_CHUNK_TABLE_FILE))).toBe(true);
        await expectChecksumContinues(sandbox.firecracker, 0);
        const memoryBytes = sandbox.build.memory.sizeBytes;
        const fetched = b.chunkCacheStats()?.fetchedBytes ?? 0;
        // The guest walks 48 MiB of its 128 MiB: what came is that, the kernel, and chunk rounding.
        expect(fetched).toBeGreaterThanOrEqual(48 * 2 ** 20);
        expect(fetched).toBeLessThan(memoryBytes * 0.7);
        expect(sandbox.server.metrics().chunksFetched).toBeGreaterThan(0);
        expect(sandbox.server.metrics().faultsDeferred).toBeGreaterThan(0);
        const since = sandbox.firecracker.console.position;
        await sandbox.firecracker.waitForConsole(GUEST_LINE, { timeoutMs: 30_000, since });
        pausedAt = lastIteration(sandbox.firecracker);
        pausedBuild = (await sandbox.pause()).build;
        await b.uploaded(pausedBuild);
        expect(expectCacheClean(join(host("b").stateDir, "chunk-cache"))).toBeGreaterThan(0);
      }
      await using store = s3.store();
      await using a = await Orchestrator.open(host("a"), { store });
      await using resumed = await a.createSandbox({ build: pausedBuild, alive: GUEST_LINE });
      await expectChecksumContinues(resumed.firecracker, pausedAt);
    }, 240_000);

    /**
     * A create on a fresh host whose store misbehaves as `wrap` makes it: it fails because the memory
     * could not be had, and leaves no process, sandbox, cache entry or fd (pipes aside: a killed store
     * closes the one it printed its port on).
     */
    async function expectFailedCreateLeavesNothing(name: string, wrap: (inner: BuildStore) => BuildStore) {
      const config = host(name);
      const fdTargets = () => openFdTargets(/^(?!pipe:)/).sort();
      const fdsBefore = fdTargets();
      {
        await using inner = s3.store();
        await using orchestrator = await Orchestrator.open(config, { store: wrap(inner) });
        const failure = await orchestrator
          .createSandbox({ build: template, alive: GUEST_LINE })
          .catch((e: unknown) => e);
        // A create step failed (STEP_FAILED names it), because the memory could not be had.
        expect(failure).toMatchObject({ code: "STEP_FAILED", cause: { code: "MEMORY_FETCH_FAILED" } });
        expect((failure as Error).message).toMatch(/memory could not be fetched/);
        expect(orchestrator.sandboxes).toEqual([]);
      }
      expect(processesUnder(config.stateDir)).toEqual([]);
      expect(expectCacheClean(join(config.stateDir, "chunk-cache"))).toBe(0);
      expect(readdirSync(join(config.stateDir, "sandboxes")).filter((n) => !n.startsWith("."))).toEqual([]);
      // Nothing new is open (a keep-alive socket of an earlier test may have closed meanwhile).
      await vi.waitFor(() => expect(fdTargets().filter((fd) => !fdsBefore.includes(fd))).toEqual([]), {
        timeout: 10_000,
      });
    }

    it("a corrupt chunk from the store fails the create (MEMORY_FETCH_FAILED) and is not cached", async () => {
      await expectFailedCreateLeavesNothing("c", (inner) => ({
        ...withChunkHook(inner, async () => {}),
        get: async (key, options) => {
          const bytes = await inner.get(key, options);
          const middle = bytes.length >> 1;
          if (key.includes(`/${BUILD_FILES.memory}.chunks/`)) bytes[middle] = (bytes[middle] ?? 0) ^ 0xff;
          return bytes;
        },
      }));
    }, 120_000);

    it("the store dying mid-restore fails the create (MEMORY_FETCH_FAILED); nothing is left", async () => {
      // The build's small files come down, Firecracker starts, and the store dies at the first chunk.
      await expectFailedCreateLeavesNothing("d", (inner) => withChunkHook(inner, () => s3.kill()));
    }, 120_000);
  },
);
