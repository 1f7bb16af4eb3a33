// Builds that move between hosts: two state directories on one machine are two hosts sharing a build
// store. Without Firecracker, a build goes up from A and comes down on B file for file; with it, a
// sandbox built on A runs on B, pauses there, and resumes on A with the guest's checksum going on.
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { realFirecracker } from "@sbx/fc-client/testing";
import { FilesystemStore } from "@sbx/store";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildDir, readBuild } from "./builds.ts";
import { createConfig, type OrchestratorConfig } from "./config.ts";
import { importBuild } from "./import-build.ts";
import { Orchestrator } from "./orchestrator.ts";
import { openOrchestratorState } from "./orchestrator-state.ts";
import { ensureLocalBuild } from "./store-sync.ts";
import { verifyTemplateFiles } from "./template-drift.ts";
import {
  expectChecksumContinues,
  GUEST_LINE,
  lastIteration,
  snapshotTestGuest,
} from "./test-guest-snapshot.ts";

const { binary: firecrackerBin, skipReason } = realFirecracker({ testGuest: true });

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
    hostA = createConfig({ stateDir: join(dir, "a"), firecrackerBin: firecracker });
    hostB = createConfig({ stateDir: join(dir, "b"), firecrackerBin: firecracker });
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
