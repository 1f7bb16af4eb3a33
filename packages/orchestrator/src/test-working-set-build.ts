// For tests and the create benchmark: a tiny-test-guest snapshot, and a build of it published with a
// recorded working set (what a template build's `working-set` step does, without an image to build).
import { rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fingerprintToFile } from "@sbx/cpu-template";
import { configureAndStart, launchFirecracker } from "@sbx/fc-client";
import { encodeMemoryHeader, encodeWorkingSet, fullMemoryHeader, type WorkingSet } from "@sbx/uffd";
import { newBuildId, publishBuild, setTemplatePointer, stageBuild } from "./builds.ts";
import { cloneFile } from "./disk-clone.ts";
import { firecrackerFor, thisHostFingerprint } from "./host-facts.ts";
import type { OrchestratorState } from "./orchestrator-state.ts";
import { BUILD_FILES, type BuildManifest } from "./template-manifest.ts";
import { type RecordedWorkingSet, recordWorkingSet } from "./working-set-record.ts";

/** Boots the tiny test guest (128 MiB), waits for its first progress line and takes a Full snapshot. */
export async function snapshotTestGuest(
  binary: string,
  guest: string,
  dir: string,
  bootArgs = "console=ttyS0",
): Promise<{ vmstate: string; memory: string }> {
  const snapshot = { vmstate: join(dir, "vmstate"), memory: join(dir, "mem") };
  await using fc = await launchFirecracker({
    binary,
    id: "test-guest-template",
    logPath: join(dir, "template.log"),
  });
  await configureAndStart(fc.client, {
    "boot-source": { kernel_image_path: guest, boot_args: bootArgs },
    "machine-config": { vcpu_count: 1, mem_size_mib: 128, track_dirty_pages: true },
  });
  await fc.waitForConsole(/^SBX-GUEST iter=\d+ /, { timeoutMs: 30_000 });
  await fc.client.patchVm({ state: "Paused" });
  await fc.client.createSnapshot({
    snapshot_type: "Full",
    snapshot_path: snapshot.vmstate,
    mem_file_path: snapshot.memory,
  });
  return snapshot;
}

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
