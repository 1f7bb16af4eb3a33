// Crash safety of pause, with a real Firecracker: the process that owns a sandbox is SIGKILLed at the
// start of every pause step. The next orchestrator reclaims the orphaned VM; every paused sandbox on
// disk then names a complete build that resumes with the right checksum, and gc removes exactly what
// the crash left half made, never the template or a named pause.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { realFirecracker } from "@sbx/fc-client/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildDir, buildsDir, readBuild } from "./builds.ts";
import { createConfig, type OrchestratorConfig } from "./config.ts";
import { importBuild } from "./import-build.ts";
import { Orchestrator } from "./orchestrator.ts";
import { openOrchestratorState } from "./orchestrator-state.ts";
import { defaultPauseSteps } from "./pause.ts";
import { verifyTemplateFiles } from "./template-drift.ts";
import { childPids } from "./test-capabilities.ts";
import { expectChecksumContinues, GUEST_LINE, snapshotTestGuest } from "./test-guest-snapshot.ts";
import { testLaunchOptions } from "./test-launch-mode.ts";

const { binary: firecrackerBin, skipReason } = realFirecracker({ testGuest: true });
if (skipReason) console.log(`[orchestrator] pause crash-safety test skipped: ${skipReason}`);
const CHILD = join(import.meta.dirname, "test-pause-crash-child.ts");

describe.skipIf(skipReason !== undefined)(
  `a pause killed at any step${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let dir: string;
    let config: OrchestratorConfig;
    let template: string;
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "sbx-pause-crash-"));
      config = createConfig({
        stateDir: join(dir, "state"),
        firecrackerBin: firecrackerBin!,
        ...testLaunchOptions(),
      });
      const snapshot = await snapshotTestGuest(firecrackerBin!, join(dir, "t"));
      await using state = await openOrchestratorState(config);
      template = (await importBuild(state, { template: "guest", ...snapshot })).id;
    }, 60_000);
    afterAll(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it("leaves every named pause complete and resumable, and gc removes only the partial build", async () => {
      const children = childPids();
      for (const step of [...defaultPauseSteps().names, undefined]) {
        const result = spawnSync(
          process.execPath,
          ["--conditions=@sbx/source", CHILD, config.stateDir, firecrackerBin!, step ?? "-"],
          {
            encoding: "utf8",
            timeout: 120_000,
          },
        );
        expect(result.signal, result.stderr).toBe(step === undefined ? null : "SIGKILL");

        await using orchestrator = await Orchestrator.open(config, {});
        // The killed owner's VM is gone: reclaim stopped it by its recorded identity.
        expect(orchestrator.state.reclaimed.reclaimed.length).toBe(step === undefined ? 0 : 1);
        expect(readdirSync(join(config.stateDir, "sandboxes"))).toEqual([]);
        const paused = await orchestrator.pausedSandboxes();
        for (const p of paused) {
          const build = await readBuild(config, p.build);
          expect(await verifyTemplateFiles(buildDir(config, p.build), build, { digests: true })).toEqual([]);
        }
        // The newest named pause resumes and the guest's checksum goes on.
        const newest = paused.sort((a, b) => (a.build < b.build ? -1 : 1)).at(-1);
        if (step === undefined) expect(newest).toBeDefined();
        if (newest) {
          await using resumed = await orchestrator.createSandbox({ from: newest, alive: GUEST_LINE });
          await expectChecksumContinues(resumed.firecracker, 0);
        }
        await orchestrator.gc();
        const left = readdirSync(buildsDir(config)).sort();
        expect(left).toEqual([template, ...paused.map((p) => p.build)].sort());
      }
      expect(childPids()).toEqual(children);
    }, 600_000);
  },
);
