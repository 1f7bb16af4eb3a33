// Pause: a running sandbox becomes a new immutable build. The VM is paused, Firecracker writes a Diff
// snapshot (the pages written since the restore) into the build's staging directory, the quiet disk is
// cloned beside it, and the memory header is the parent's with the Diff's pages given to the new
// build: the one place a file's extents are read. Named steps, so a test can stop between any two.
import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { FirecrackerProcess } from "@sbx/fc-client";
import {
  encodeMemoryHeader,
  type MemoryHeader,
  memoryFileExtents,
  overlayMemoryHeader,
  ownedRanges,
} from "@sbx/uffd";
import { newBuildId, type PausedSandbox, publishBuild, setPausedPointer, stageBuild } from "./builds.ts";
import { cloneFile } from "./disk-clone.ts";
import { firecrackerFor } from "./host-facts.ts";
import type { SandboxContext } from "./sandbox.ts";
import { updateSandboxRecord } from "./sandbox-steps.ts";
import { requireFromStep, runSteps, type StepEvent, StepList } from "./steps.ts";
import { BUILD_FILES, type BuildManifest } from "./template-manifest.ts";

/** How a pause runs: keep running on the new build (a fork) or stop, and whether to record it as paused. */
export interface PauseOptions {
  /** Resume the VM after the snapshot and run on from the new build (what `fork` does). */
  keepRunning?: boolean;
  /** Record the build as this sandbox's paused state (`paused/{id}.json`); default true. */
  record?: boolean;
  onEvent?: (event: StepEvent) => void;
}

interface PauseContext {
  sandbox: SandboxContext;
  firecracker: FirecrackerProcess;
  options: PauseOptions;
  buildId: string;
  staging?: string;
  vmPaused: boolean;
  header?: MemoryHeader;
  build?: BuildManifest;
  paused?: PausedSandbox;
}

/** The pause steps, in order: a fork edits this list. */
export function defaultPauseSteps(): StepList<PauseContext> {
  return new StepList<PauseContext>([
    {
      name: "staging",
      async run(context) {
        context.staging = await stageBuild(context.sandbox.state.config, context.buildId);
      },
    },
    {
      name: "pause-vm",
      async run(context) {
        await context.firecracker.client.patchVm({ state: "Paused" });
        context.vmPaused = true;
      },
    },
    {
      name: "snapshot",
      async run(context) {
        const staging = requireFromStep(context.staging, "the staging directory");
        const vm = context.sandbox.vm;
        // A jailed VM writes into its chroot; the files are renamed into the build before the jail goes.
        if (vm) await vm.snapshotInto(staging, "Diff");
        else
          await context.firecracker.client.createSnapshot({
            snapshot_type: "Diff",
            snapshot_path: join(staging, BUILD_FILES.vmstate),
            mem_file_path: join(staging, BUILD_FILES.memory),
          });
      },
    },
    {
      name: "disk",
      async run(context) {
        const disk = context.sandbox.diskPath;
        // The VM is paused: its disk is quiet while it is cloned.
        if (disk)
          await cloneFile(
            disk,
            join(requireFromStep(context.staging, "the staging directory"), BUILD_FILES.rootfs),
          );
      },
    },
    {
      name: "header",
      async run(context) {
        const staging = requireFromStep(context.staging, "the staging directory");
        const { extents } = memoryFileExtents(join(staging, BUILD_FILES.memory));
        context.header = overlayMemoryHeader(context.sandbox.header, context.buildId, extents);
        await writeFile(join(staging, BUILD_FILES.header), encodeMemoryHeader(context.header));
      },
    },
    {
      name: "publish",
      async run(context) {
        const parent = context.sandbox.build;
        const header = requireFromStep(context.header, "the memory header");
        const owned = ownedRanges(header, context.buildId).reduce((sum, range) => sum + range.length, 0);
        const { boot, hostFingerprint, network, template, arch, egress } = parent;
        context.build = await publishBuild(
          context.sandbox.state.config,
          requireFromStep(context.staging, "the staging directory"),
          {
            id: context.buildId,
            kind: "pause",
            parent: parent.id,
            template,
            createdAt: new Date().toISOString(),
            arch,
            firecrackerVersion: (await firecrackerFor(context.sandbox.state)).version,
            jailed: context.sandbox.vm?.jailed ?? false,
            ...(boot ? { boot } : {}),
            hostFingerprint,
            ...(network ? { network } : {}),
            ...(egress ? { egress } : {}),
            memory: { sizeBytes: header.memorySize, ownedBytes: owned },
          },
        );
      },
    },
    {
      name: "pointer",
      async run(context) {
        const build = requireFromStep(context.build, "the published build");
        context.paused = {
          schemaVersion: 2,
          id: context.sandbox.sandboxId,
          template: build.template,
          build: build.id,
          pausedAt: new Date().toISOString(),
        };
        // The paused state moves last: a crash before it leaves the previous one, and a build gc removes.
        if (context.options.record !== false)
          await setPausedPointer(context.sandbox.state.config, context.paused);
      },
    },
  ]);
}

/**
 * Runs the pause steps. On failure the staging directory goes, and a VM that was to keep running is
 * resumed, so a failed pause costs the sandbox nothing.
 */
export async function pauseSandbox(
  sandbox: SandboxContext,
  firecracker: FirecrackerProcess,
  options: PauseOptions,
): Promise<{ paused: PausedSandbox; build: BuildManifest; header: MemoryHeader }> {
  const buildId = newBuildId();
  const release = sandbox.state.leases.lease(buildId);
  const context: PauseContext = { sandbox, firecracker, options, buildId, vmPaused: false };
  const resume = () => firecracker.client.patchVm({ state: "Resumed" });
  try {
    try {
      await runSteps(defaultPauseSteps(), context, options.onEvent ? { onEvent: options.onEvent } : {});
    } catch (error) {
      if (context.staging) await rm(context.staging, { recursive: true, force: true });
      if (context.vmPaused && options.keepRunning) await resume().catch(() => undefined);
      throw error;
    }
    const build = requireFromStep(context.build, "the published build");
    if (options.keepRunning) {
      // The record pins the build the sandbox now runs from before the lease goes.
      await updateSandboxRecord(sandbox, (record) => ({ ...record, build: build.id }));
      sandbox.buildId = build.id;
      await resume();
    }
    return {
      paused: requireFromStep(context.paused, "the paused record"),
      build,
      header: requireFromStep(context.header, "the memory header"),
    };
  } finally {
    release();
  }
}
