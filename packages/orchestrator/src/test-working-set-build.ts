// For tests and the create benchmark: a tiny-test-guest snapshot, and a build of it published with a
// recorded working set (what a template build's `working-set` step does, without an image to build).
import { rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fingerprintToFile } from "@sbx/cpu-template";
import { encodeMemoryHeader, encodeWorkingSet, fullMemoryHeader, type WorkingSet } from "@sbx/uffd";
import { newBuildId, publishBuild, setTemplatePointer, stageBuild } from "./builds.ts";
import { cloneFile } from "./disk-clone.ts";
import { firecrackerFor, thisHostFingerprint } from "./host-facts.ts";
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
  const config = state.config;
  const id = newBuildId();
  const release = state.leases.lease(id);
  const staging = await stageBuild(config, id);
  try {
    await cloneFile(options.vmstate, join(staging, BUILD_FILES.vmstate));
    await cloneFile(options.memory, join(staging, BUILD_FILES.memory));
    const memorySize = (await stat(options.memory)).size;
    await writeFile(
      join(staging, BUILD_FILES.header),
      encodeMemoryHeader(fullMemoryHeader({ build: id, memorySize })),
    );
    const firecracker = await firecrackerFor(state);
    let recorded: RecordedWorkingSet | undefined;
    if (options.workingSet)
      await writeFile(join(staging, BUILD_FILES.workingSet), encodeWorkingSet(options.workingSet));
    else
      recorded = await recordWorkingSet({
        stagingDir: staging,
        buildId: id,
        firecrackerBinary: firecracker.path,
        config,
        until: options.alive,
        timeoutMs: 30_000,
      });
    const manifest = await publishBuild(config, staging, {
      id,
      kind: "template",
      template: options.template,
      createdAt: new Date().toISOString(),
      arch: config.targetArch,
      firecrackerVersion: firecracker.version,
      hostFingerprint: fingerprintToFile(thisHostFingerprint()),
      memory: { sizeBytes: memorySize, ownedBytes: memorySize },
    });
    await setTemplatePointer(config, options.template, id);
    return { manifest, recorded };
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    throw error;
  } finally {
    release();
  }
}
