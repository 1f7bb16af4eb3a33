// The one sandbox lifecycle end to end, with a real Firecracker and the tiny test guest: a build from a
// Full snapshot, 10 sandboxes from it at once, pause into immutable builds and resume, a template rebuilt
// under a paused sandbox, memory files copied without holes or gone, a chain of 10 pauses, fork, gc.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { mkdir, mkdtemp, rename, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostArch } from "@sbx/arch";
import { buildTestGuest, realFirecracker } from "@sbx/fc-client/testing";
import { resolveNativeHelper } from "@sbx/uffd";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildDir, readBuildHeader, readTemplatePointer } from "./builds.ts";
import { createConfig } from "./config.ts";
import { OrchestratorError } from "./errors.ts";
import { importBuild } from "./import-build.ts";
import { type OrchestratorState, openOrchestratorState } from "./orchestrator-state.ts";
import { createSandbox, defaultSandboxSteps, type Sandbox } from "./sandbox.ts";
import { BUILD_FILES } from "./template-manifest.ts";
import { childPids } from "./test-capabilities.ts";
import {
  expectChecksumContinues,
  lastIteration as lastGuestIteration,
  snapshotTestGuest,
} from "./test-guest-snapshot.ts";
import { testLaunchOptions } from "./test-launch-mode.ts";

const { binary: firecrackerBin, skipReason } = realFirecracker({ testGuest: true });
if (skipReason) console.log(`[orchestrator] sandbox lifecycle test skipped: ${skipReason}`);

const fdCount = () => readdirSync("/proc/self/fd").length;
const GUEST_LINE = /^SBX-GUEST iter=\d+ sum=[0-9a-f]{8}$/;
// A liveness bound, not a speed target: in a full run other packages' guests spin the same two cores.
const ALIVE = { alive: GUEST_LINE, aliveTimeoutMs: 60_000 } as const;

const lastIteration = (sandbox: Sandbox) => lastGuestIteration(sandbox.firecracker);

const checksumContinues = (sandbox: Sandbox, after: number) =>
  expectChecksumContinues(sandbox.firecracker, after);

/** Runs a sandbox until it prints another line, then returns the newest iteration it printed. */
async function runOn(sandbox: Sandbox): Promise<number> {
  const since = sandbox.firecracker.console.position;
  await sandbox.firecracker.waitForConsole(GUEST_LINE, { timeoutMs: 60_000, since });
  return lastIteration(sandbox);
}

describe.skipIf(skipReason !== undefined)(
  `sandboxes from builds${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let dir: string;
    let state: OrchestratorState;
    let templateBuild: string;
    let before: { fds: number; children: number[] };

    /** A Full snapshot of the test guest once it printed iteration `atLeast`, imported as template "guest". */
    async function snapshotTemplate(atLeast: number, into: string): Promise<string> {
      const snapshot = await snapshotTestGuest(firecrackerBin!, into, { atLeast });
      return (await importBuild(state, { template: "guest", ...snapshot })).id;
    }

    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "sbx-lifecycle-"));
      await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") });
      before = { fds: fdCount(), children: childPids() };
      state = await openOrchestratorState(
        createConfig({
          stateDir: join(dir, "state"),
          firecrackerBin: firecrackerBin!,
          ...testLaunchOptions(),
          maxConcurrentCreates: 16,
        }),
      );
      await mkdir(join(dir, "t1"));
      await mkdir(join(dir, "t2"));
      templateBuild = await snapshotTemplate(2, join(dir, "t1"));
    }, 60_000);

    afterAll(async () => {
      await state?.close();
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(childPids()).toEqual(before.children);
      expect(fdCount()).toBe(before.fds);
      await rm(dir, { recursive: true, force: true });
    });

    it("10 sandboxes at once, one paused into a build and resumed, all killed, nothing left", async () => {
      const sandboxes = await Promise.all(
        Array.from({ length: 10 }, () =>
          createSandbox(state, { template: "guest", alive: GUEST_LINE, aliveTimeoutMs: 60_000 }),
        ),
      );
      try {
        expect(new Set(sandboxes.map((s) => s.firecracker.pid)).size).toBe(10);
        for (const sandbox of sandboxes) await checksumContinues(sandbox, 1);
        expect(sandboxes[0]!.timings.map((t) => t.step)).toEqual(defaultSandboxSteps().names);
        const first = sandboxes[0]!;
        const pausedAt = await runOn(first);
        const paused = await first.pause();
        expect(existsSync(first.directory)).toBe(false);
        const header = await readBuildHeader(state.config, paused.build);
        expect(header.builds).toContain(paused.build);
        expect(header.builds).toContain(templateBuild);
        // Nine guests spin the host's cores meanwhile: a liveness bound, not a speed target.
        await using resumed = await createSandbox(state, {
          from: paused,
          alive: GUEST_LINE,
          aliveTimeoutMs: 60_000,
        });
        await checksumContinues(resumed, pausedAt);
        expect(resumed.server.codePath).toBe(resolveNativeHelper("auto", hostArch()) ? "native" : "pure-ffi");
      } finally {
        await Promise.all(sandboxes.map((s) => s.kill()));
      }
      expect(readdirSync(join(state.config.stateDir, "sandboxes"))).toEqual([]);
    }, 180_000);

    it("a rebuilt template, a memory file copied without holes, and a parent gone: exact, or a typed refusal", async () => {
      const sandbox = await createSandbox(state, { template: "guest", ...ALIVE });
      const pausedAt = await runOn(sandbox);
      const paused = await sandbox.pause();

      // Rebuild: a new snapshot at another point of the guest's run becomes the template's build.
      const rebuilt = await snapshotTemplate(5, join(dir, "t2"));
      expect((await readTemplatePointer(state.config, "guest")).build).toBe(rebuilt);
      expect(rebuilt > templateBuild).toBe(true);

      // The pause's memory file with its holes filled, as a copy or an upload leaves it.
      const memory = join(buildDir(state.config, paused.build), BUILD_FILES.memory);
      execFileSync("cp", ["--sparse=never", memory, `${memory}.full`]);
      await rename(`${memory}.full`, memory);
      {
        await using resumed = await createSandbox(state, { from: paused, ...ALIVE });
        await checksumContinues(resumed, pausedAt);
      }

      // The template build the pause layers on, moved away: refused before anything starts.
      const parentMemory = join(buildDir(state.config, templateBuild), BUILD_FILES.memory);
      await rename(parentMemory, `${parentMemory}.away`);
      try {
        const error = await createSandbox(state, { from: paused, ...ALIVE }).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(OrchestratorError);
        expect((error as OrchestratorError).code).toBe("BUILD_MISSING");
        expect((error as OrchestratorError).details.build).toBe(templateBuild);
        expect((error as Error).message).toContain(templateBuild);
        expect(readdirSync(join(state.config.stateDir, "sandboxes"))).toEqual([]);
      } finally {
        await rename(`${parentMemory}.away`, parentMemory);
      }
    }, 180_000);

    it("a chain of 10 pause/resume cycles resumes exactly each time", async () => {
      let sandbox = await createSandbox(state, { template: "guest", ...ALIVE });
      try {
        for (let depth = 1; depth <= 10; depth++) {
          const pausedAt = await runOn(sandbox);
          const paused = await sandbox.pause();
          const header = await readBuildHeader(state.config, paused.build);
          expect(header.builds.length).toBeLessThanOrEqual(depth + 1);
          sandbox = await createSandbox(state, { from: paused, ...ALIVE });
          await checksumContinues(sandbox, pausedAt);
        }
      } finally {
        await sandbox.kill();
      }
    }, 300_000);

    it("a page-fault server that stops, for any reason, takes its sandbox with it", async () => {
      const sandbox = await createSandbox(state, { template: "guest", ...ALIVE });
      await sandbox.server.close();
      // Not left hanging on its next fault: the VM is killed and everything it owned goes.
      const exit = await sandbox.firecracker.exited;
      expect(exit).toBeDefined();
      await sandbox.kill();
      expect(existsSync(sandbox.directory)).toBe(false);
    }, 60_000);

    it("fork(3): the original runs on, each fork continues from the fork point with its own memory", async () => {
      await using original = await createSandbox(state, { template: "guest", ...ALIVE });
      const forkedAt = await runOn(original);
      const forks = await original.fork(3, ALIVE);
      try {
        expect(new Set(forks.map((f) => f.firecracker.pid)).size).toBe(3);
        expect(forks.every((f) => f.build.id === original.build.id)).toBe(true);
        expect(original.build.kind).toBe("pause");
        for (const fork of forks) await checksumContinues(fork, forkedAt);
        await checksumContinues(original, await runOn(original));
        // The original pauses again on top of the fork's build.
        const paused = await original.pause({ keepRunning: true });
        const header = await readBuildHeader(state.config, paused.build);
        expect(header.builds).toContain(paused.build);
        await checksumContinues(original, lastIteration(original));
      } finally {
        await Promise.all(forks.map((f) => f.kill()));
      }
    }, 180_000);
  },
);
