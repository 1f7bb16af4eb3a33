// For tests and the create benchmark: a snapshot imported as a build with a recorded (or given) working
// set: what a template build's `working-set` step does, without an image to build.
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { encodeWorkingSet, type WorkingSet } from "@sbx/uffd";
import { firecrackerFor } from "./host-facts.ts";
import { importBuild } from "./import-build.ts";
import { launchModeFor } from "./jail-plan.ts";
import type { OrchestratorState } from "./orchestrator-state.ts";
import { BUILD_FILES, type BuildManifest } from "./template-manifest.ts";
import { type RecordedWorkingSet, recordWorkingSet } from "./working-set-record.ts";

/** Stages a Full snapshot as a build, records its working set until `alive`, publishes and names it. */
export async function importWithWorkingSet(
  state: OrchestratorState,
  options: {
    template: string;
    vmstate: string;
    memory: string;
    /** A console line, or `quiet` (no new fault for a while). */
    alive: RegExp | "quiet";
    /** Store this set instead of recording one (a benchmark's stale working set). */
    workingSet?: WorkingSet;
  },
): Promise<{ manifest: BuildManifest; recorded: RecordedWorkingSet | undefined }> {
  let recorded: RecordedWorkingSet | undefined;
  const manifest = await importBuild(state, {
    template: options.template,
    vmstate: options.vmstate,
    memory: options.memory,
    beforePublish: async (staging, id) => {
      if (options.workingSet) {
        await writeFile(join(staging, BUILD_FILES.workingSet), encodeWorkingSet(options.workingSet));
        return;
      }
      recorded = await recordWorkingSet({
        stagingDir: staging,
        buildId: id,
        firecrackerBinary: (await firecrackerFor(state)).path,
        config: state.config,
        launchMode: await launchModeFor(state),
        uids: state.uidPool,
        until: options.alive,
        timeoutMs: 30_000,
      });
    },
  });
  return { manifest, recorded };
}
