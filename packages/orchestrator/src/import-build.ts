// A build from snapshot files made elsewhere (a fork's own pipeline, a test's Firecracker): the files
// are cloned into a new build with a Full memory header, published, and optionally named.
import { rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Fingerprint } from "@sbx/cpu-template";
import { type CustomCpuTemplate, fingerprintToFile } from "@sbx/cpu-template";
import { encodeMemoryHeader, fullMemoryHeader } from "@sbx/uffd";
import { newBuildId, publishBuild, setTemplatePointer, stageBuild } from "./builds.ts";
import { cloneFile } from "./disk-clone.ts";
import { firecrackerFor, thisHostFingerprint } from "./host-facts.ts";
import type { OrchestratorState } from "./orchestrator-state.ts";
import { BUILD_FILES, type BuildManifest } from "./template-manifest.ts";

/** What `importBuild` publishes: the snapshot files made elsewhere and the template name to point at them. */
export interface ImportBuildOptions {
  /** The template name the build belongs to; with `setPointer`, the name that points at it. */
  template: string;
  /** A Full snapshot: Firecracker's VM state and memory files. */
  vmstate: string;
  memory: string;
  /** The disk the snapshot's VM had at the disk slot path, if any. */
  rootfs?: string;
  /** The TAP the snapshot reopens, when its VM had a NIC. */
  network?: BuildManifest["network"];
  /** The CPU the guest was told about; default this host's. */
  hostFingerprint?: Fingerprint;
  /** The custom CPU template the guest booted with, kept in the build for every resume's check. */
  cpuTemplate?: CustomCpuTemplate;
  /** The Firecracker that wrote the snapshot; default the configured one's version. */
  firecrackerVersion?: string;
  /** Point the template name at the new build (default true). */
  setPointer?: boolean;
  /** Adds files to the staged build before it is sealed (a working set, say); a throw removes the staging. */
  beforePublish?: (staging: string, id: string) => Promise<void>;
}

/** Publishes snapshot files made elsewhere as a new immutable build with a Full memory header. */
export async function importBuild(
  state: OrchestratorState,
  options: ImportBuildOptions,
): Promise<BuildManifest> {
  const config = state.config;
  const id = newBuildId();
  const release = state.leases.lease(id);
  const staging = await stageBuild(config, id).catch((error: unknown) => {
    release();
    throw error;
  });
  try {
    await cloneFile(options.vmstate, join(staging, BUILD_FILES.vmstate));
    await cloneFile(options.memory, join(staging, BUILD_FILES.memory));
    if (options.rootfs) await cloneFile(options.rootfs, join(staging, BUILD_FILES.rootfs));
    if (options.cpuTemplate)
      await writeFile(join(staging, BUILD_FILES.cpuTemplate), JSON.stringify(options.cpuTemplate));
    const memorySize = (await stat(options.memory)).size;
    await writeFile(
      join(staging, BUILD_FILES.header),
      encodeMemoryHeader(fullMemoryHeader({ build: id, memorySize })),
    );
    await options.beforePublish?.(staging, id);
    const manifest = await publishBuild(config, staging, {
      id,
      kind: "template",
      template: options.template,
      createdAt: new Date().toISOString(),
      arch: config.targetArch,
      firecrackerVersion: options.firecrackerVersion ?? (await firecrackerFor(state)).version,
      hostFingerprint: fingerprintToFile(options.hostFingerprint ?? thisHostFingerprint()),
      ...(options.network ? { network: options.network } : {}),
      memory: { sizeBytes: memorySize, ownedBytes: memorySize },
    });
    if (options.setPointer !== false) await setTemplatePointer(config, options.template, id);
    return manifest;
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    throw error;
  } finally {
    release();
  }
}
