// Template build: a named StepList from an OCI image to a published build and the template name that
// points at it. Everything happens in the build's staging directory; `publish` renames it into place
// and `pointer` moves the name, so a reader sees the old build or the complete new one, never half of
// one, and a rebuild never changes a build that paused sandboxes still layer on.
import { randomBytes } from "node:crypto";
import { mkdir, open, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { hostArch, type Logger, sha256File } from "@sbx/arch";
import {
  type CustomCpuTemplate,
  type Fingerprint,
  fingerprintToFile,
  hostFingerprint,
  parseCustomCpuTemplate,
  readStaticTemplateCustomForm,
} from "@sbx/cpu-template";
import { configureAndStart, type FirecrackerProcess, type FullVmConfiguration } from "@sbx/fc-client";
import { buildExt4Image, type Ext4Progress, parseProvisionExit, READY_MARKER, repairExt4 } from "@sbx/rootfs";
import { encodeMemoryHeader, fullMemoryHeader } from "@sbx/uffd";
import { type ArtifactResolver, assertCanRunFirecracker, TEMPLATE_EXT4_OPTIONS } from "./boot-parameters.ts";
import {
  buildDir,
  newBuildId,
  publishBuild,
  readBuild,
  readTemplatePointer,
  setTemplatePointer,
  stageBuild,
  templatesDir,
} from "./builds.ts";
import type { OrchestratorConfig } from "./config.ts";
import { resolveEgressPolicy } from "./egress-policy.ts";
import { OrchestratorError } from "./errors.ts";
import { defaultVmLimits, type LaunchMode, launchModeFor } from "./jail-plan.ts";
import { type NetworkNamespace, networkNamesFor } from "./network.ts";
import type { OrchestratorState } from "./orchestrator-state.ts";
import type { ProgressEvent } from "./progress.ts";
import { allocateNetwork } from "./sandbox-steps.ts";
import { requireFromStep, runSteps, type StepEvent, StepList, type StepRunResult } from "./steps.ts";
import { describeDifferences, diffBootParameters, verifyTemplateFiles } from "./template-drift.ts";
import {
  type ParsedTemplateRequest,
  parseTemplateRequest,
  resolveTemplateInputs,
  type TemplateInputs,
  type TemplateRequest,
} from "./template-inputs.ts";
import { BUILD_FILES, type BuildManifest } from "./template-manifest.ts";
import { type LaunchedVm, launchVm } from "./vm-launch.ts";
import { startProgressLog, waitForConsoleLogged } from "./wait-for-line.ts";
import { recordWorkingSet } from "./working-set-record.ts";

/** The agent's vsock: its guest CID and the socket Firecracker binds in the VM's working directory. */
export const AGENT_GUEST_CID = 3;
export const AGENT_VSOCK_SOCKET = "vsock.sock";
/** The port the guest agent listens on (the init's default, `sbx.agent_vsock`). */
export const AGENT_VSOCK_PORT = 1024;

/** The guest MAC every sandbox has: clones share it, each in its own network namespace. */
export const GUEST_MAC = "06:00:c0:a8:f1:02";
export const GUEST_INTERFACE_ID = "eth0";
export const ROOTFS_DRIVE_ID = "rootfs";

/**
 * The rootfs path every VM of this state directory is told. On the host it is an empty placeholder;
 * each VM's private mount namespace binds its own disk over it (snapshots reopen disks by path).
 */
export function diskSlotPath(config: Pick<OrchestratorConfig, "stateDir">): string {
  return join(config.stateDir, "disk-slot", BUILD_FILES.rootfs);
}

export async function ensureDiskSlot(config: Pick<OrchestratorConfig, "stateDir">): Promise<string> {
  const path = diskSlotPath(config);
  await mkdir(join(config.stateDir, "disk-slot"), { recursive: true, mode: 0o700 });
  await (await open(path, "a", 0o600)).close();
  return path;
}

/** What a template is built from (an image, a build recipe) and how. */
export interface BuildTemplateOptions {
  request: TemplateRequest;
  resolver?: ArtifactResolver;
  /** The console line that says the guest is ready to be snapshotted; default the sbx init's marker. */
  readyMarker?: string | RegExp;
  /** Edit the build steps (insert, replace or remove by name). */
  steps?: (defaults: StepList<TemplateBuildContext>) => StepList<TemplateBuildContext>;
  onEvent?: (event: StepEvent) => void;
  signal?: AbortSignal;
  /** Progress of long waits (boot, provisioning), at most every `waitLogIntervalMs`. */
  logger?: Logger;
  /** Byte progress of the image pull, the unpack and the ext4 image (see `createProgressReporter`). */
  onProgress?: (event: ProgressEvent) => void;
  /**
   * Restore the snapshot once before publishing and record the pages its guest touches until `alive`
   * (a console line; by default until its faults go quiet, as sbx's guests print nothing after a
   * restore), for every create to prefetch; `false` skips it. A recording that fails is logged and the
   * build is published without one: creates then restore on demand.
   */
  workingSet?: { alive?: RegExp } | false;
}

/** What the template build steps share: the request, the staging directory, and what each step made. */
export interface TemplateBuildContext {
  state: OrchestratorState;
  config: OrchestratorConfig;
  request: ParsedTemplateRequest;
  options: BuildTemplateOptions;
  /** The id the build gets when it is published. */
  buildId: string;
  /** `builds/.staging-{id}`: removed on failure, renamed to `builds/{id}` by publish. */
  stagingDir: string;
  inputs?: TemplateInputs;
  rootfsPath?: string;
  cpuTemplate?: CustomCpuTemplate;
  /** A static template's custom form (from `staticCpuTemplatesDir`): checked at resume, not sent to Firecracker. */
  staticCustomForm?: CustomCpuTemplate;
  fingerprint?: Fingerprint;
  network?: NetworkNamespace;
  /** Jailed or unjailed (SBX_UNJAILED): resolved before the build starts anything. */
  launchMode?: LaunchMode;
  /** The template VM as launched (its paths are what templateVmConfig tells Firecracker). */
  vm?: LaunchedVm;
  firecracker?: FirecrackerProcess;
  manifest?: BuildManifest;
  /** Set by publish: `builds/{id}`. */
  buildDir?: string;
}

/** Firecracker's whole VM description for a template boot (the provisioning one or the final one). */
export function templateVmConfig(context: TemplateBuildContext, bootArgs: string): FullVmConfiguration {
  const { boot } = requireFromStep(context.inputs, "the template inputs");
  const cpu = boot.cpuTemplate;
  const config: FullVmConfiguration = {
    "boot-source": { kernel_image_path: context.vm?.vmPaths.kernel ?? boot.kernel.path, boot_args: bootArgs },
    "machine-config": {
      vcpu_count: boot.vcpuCount,
      mem_size_mib: boot.memoryMib,
      smt: boot.smt,
      huge_pages: boot.hugePages,
      ...(cpu.kind === "static" ? { cpu_template: cpu.name } : {}),
    },
    drives: [
      {
        drive_id: ROOTFS_DRIVE_ID,
        path_on_host: diskSlotPath(context.config),
        is_root_device: true,
        is_read_only: false,
      },
    ],
  };
  if (context.cpuTemplate) config["cpu-config"] = context.cpuTemplate as FullVmConfiguration["cpu-config"];
  if (boot.balloon) {
    // Deflated (0 MiB): it exists for free page reporting, which can only be enabled before boot.
    config.balloon = {
      amount_mib: 0,
      deflate_on_oom: true,
      free_page_reporting: boot.balloon.freePageReporting,
      stats_polling_interval_s: boot.balloon.statsPollingIntervalS,
    };
  }
  // The agent's vsock: the socket path is relative, so each VM (template boot, every restored sandbox)
  // binds it in its own working directory, and the snapshot carries no host path.
  config.vsock = { guest_cid: AGENT_GUEST_CID, uds_path: AGENT_VSOCK_SOCKET };
  if (context.network) {
    config["network-interfaces"] = [
      { iface_id: GUEST_INTERFACE_ID, host_dev_name: context.network.tapName, guest_mac: GUEST_MAC },
    ];
  }
  return config;
}

async function launchTemplateVm(
  context: TemplateBuildContext,
  kind: "provision" | "template",
  signal: AbortSignal,
): Promise<LaunchedVm> {
  const inputs = requireFromStep(context.inputs, "the template inputs");
  const mode = context.launchMode ?? (await launchModeFor(context.state));
  // A VM that ended (the provisioning boot) leaves its vsock socket; the next one binds it anew.
  await rm(join(context.stagingDir, AGENT_VSOCK_SOCKET), { force: true });
  // Unique per VM: a jail's directory is named by it, and builds may run side by side.
  const id = `${kind}-${randomBytes(4).toString("hex")}`;
  const vm = await launchVm({
    mode,
    config: context.config,
    id,
    firecrackerBinary: inputs.artifacts.firecracker.path,
    // Unjailed, the vsock socket (a relative path in the VM config) lands here, removed with the staging.
    workDir: context.stagingDir,
    logPath: join(context.stagingDir, `${kind}.log`),
    ...(context.network ? { networkNamespace: context.network.name } : {}),
    disk: requireFromStep(context.rootfsPath, "the rootfs"),
    kernel: inputs.boot.kernel.path,
    uids: context.state.uidPool,
    limits: defaultVmLimits({
      vcpuCount: inputs.boot.vcpuCount,
      memoryBytes: inputs.boot.memoryMib * 1024 * 1024,
    }),
    signal,
    ...(context.options.logger ? { logger: context.options.logger } : {}),
  });
  context.vm = vm;
  return vm;
}

function epochArgument(): string {
  return `sbx.epoch=${Math.floor(Date.now() / 1000)}`;
}

/** The template build steps, in order: a fork edits this list. */
export function defaultTemplateBuildSteps(): StepList<TemplateBuildContext> {
  return new StepList<TemplateBuildContext>([
    {
      name: "staging",
      async run(context) {
        // Until the name points at it, only this lease keeps gc away from the build.
        const release = context.state.leases.lease(context.buildId);
        try {
          context.stagingDir = await stageBuild(context.config, context.buildId);
        } catch (error) {
          release();
          throw error;
        }
        return async () => {
          await rm(context.stagingDir, { recursive: true, force: true });
          release();
        };
      },
    },
    {
      name: "inputs",
      async run(context, { signal }) {
        context.inputs = await resolveTemplateInputs(
          context.config,
          context.request,
          join(context.stagingDir, "work"),
          {
            signal,
            ...(context.options.resolver ? { resolver: context.options.resolver } : {}),
            ...(context.options.onProgress ? { onProgress: context.options.onProgress } : {}),
          },
        );
      },
    },
    {
      name: "rootfs",
      async run(context) {
        const inputs = requireFromStep(context.inputs, "the template inputs");
        const output = join(context.stagingDir, BUILD_FILES.rootfs);
        const onProgress = context.options.onProgress;
        await buildExt4Image({
          sourceDir: inputs.rootDir,
          output,
          ...TEMPLATE_EXT4_OPTIONS,
          ...(onProgress
            ? {
                onProgress: (progress: Ext4Progress) =>
                  onProgress({
                    task: BUILD_FILES.rootfs,
                    phase: "ext4",
                    bytes: progress.bytes,
                    done: progress.phase === "done",
                  }),
              }
            : {}),
        });
        await rm(join(context.stagingDir, "work"), { recursive: true, force: true });
        context.rootfsPath = output;
      },
    },
    {
      name: "cpu-template",
      async run(context) {
        const cpu = requireFromStep(context.inputs, "the template inputs").boot.cpuTemplate;
        if (cpu.kind === "custom") {
          const text = await readFile(cpu.path, "utf8");
          if ((await sha256File(cpu.path)) !== cpu.sha256) {
            throw new OrchestratorError(
              "TEMPLATE_INVALID",
              `${cpu.path} changed while the template was built`,
            );
          }
          context.cpuTemplate = parseCustomCpuTemplate(JSON.parse(text));
        }
        const staticForms = context.config.staticCpuTemplatesDir;
        if (cpu.kind === "static" && staticForms) {
          // What the static template masks, kept in the build: resumes check CPU moves against it.
          context.staticCustomForm = readStaticTemplateCustomForm(cpu.name, staticForms);
        }
        // Another arch's template can get its rootfs here, but only its own hosts can fingerprint and boot it.
        if (context.config.targetArch === hostArch())
          context.fingerprint = hostFingerprint({
            firecrackerVersion: requireFromStep(context.inputs, "the template inputs").boot.firecracker
              .version,
          });
      },
    },
    {
      name: "network",
      async run(context, { signal }) {
        if (!context.request.network) return;
        const names = networkNamesFor(`build-${randomBytes(4).toString("hex")}`);
        const { network, release } = await allocateNetwork(context.state, names, {
          signal,
          policy: resolveEgressPolicy(context.config.egressPolicy, context.request.egress),
        });
        context.network = network;
        return release;
      },
    },
    {
      name: "provision",
      async run(context, { signal }) {
        if (context.request.provisionScript === undefined) return;
        assertCanRunFirecracker(context.config);
        const inputs = requireFromStep(context.inputs, "the template inputs");
        await ensureDiskSlot(context.config);
        const bootArgs = `${inputs.boot.kernelCommandLine} ${epochArgument()} sbx.provision=1`;
        await using vm = await launchTemplateVm(context, "provision", signal);
        const fc = vm.fc;
        await configureAndStart(fc.client, templateVmConfig(context, bootArgs), { signal });
        // The provisioning runner ends in a clean shutdown; Firecracker exits with the VM.
        const stopProgress = startProgressLog({
          logger: context.options.logger,
          intervalMs: context.config.waitLogIntervalMs,
          message: `still provisioning template ${context.request.name}`,
          fields: () => ({ lastLine: fc.console.lines(1)[0] }),
        });
        const timeout = AbortSignal.timeout(context.config.provisioningTimeoutMs);
        const exited = await Promise.race([
          fc.exited,
          new Promise<undefined>((resolve) => timeout.addEventListener("abort", () => resolve(undefined))),
        ]).finally(stopProgress);
        const console = fc.console.lines(40);
        if (exited === undefined) {
          throw new OrchestratorError(
            "PROVISION_FAILED",
            `provisioning did not finish within ${context.config.provisioningTimeoutMs} ms (provisioningTimeoutMs)`,
            { details: { console } },
          );
        }
        const status = parseProvisionExit(fc.console.lines().join("\n"));
        if (status !== 0) {
          throw new OrchestratorError(
            "PROVISION_FAILED",
            status === undefined
              ? "the provisioning boot ended without reporting an exit status"
              : `the provisioning script failed with exit status ${status}`,
            { details: { status, console } },
          );
        }
        await repairExt4(requireFromStep(context.rootfsPath, "the rootfs"));
      },
    },
    {
      name: "boot",
      async run(context, { signal }) {
        assertCanRunFirecracker(context.config);
        const inputs = requireFromStep(context.inputs, "the template inputs");
        await ensureDiskSlot(context.config);
        const vm = await launchTemplateVm(context, "template", signal);
        const fc = vm.fc;
        context.firecracker = fc;
        try {
          await configureAndStart(
            fc.client,
            templateVmConfig(context, `${inputs.boot.kernelCommandLine} ${epochArgument()}`),
            { signal },
          );
        } catch (error) {
          await vm.kill({ discard: true });
          throw error;
        }
        return async () => {
          await vm.kill({ discard: true, graceMs: 1000 });
        };
      },
    },
    {
      name: "wait-ready",
      async run(context) {
        const fc = requireFromStep(context.firecracker, "the template VM");
        await waitForConsoleLogged(fc, context.options.readyMarker ?? READY_MARKER, {
          what: `template ${context.request.name}'s ready marker`,
          timeoutMs: context.config.readyTimeoutMs,
          logIntervalMs: context.config.waitLogIntervalMs,
          ...(context.options.logger ? { logger: context.options.logger } : {}),
        });
      },
    },
    {
      name: "snapshot",
      async run(context) {
        const vm = requireFromStep(context.vm, "the template VM");
        await vm.fc.client.patchVm({ state: "Paused" });
        // Full: the template is the base every sandbox's memory is layered on. A jailed VM writes it
        // into its chroot; it is renamed into the staging directory before the jail goes.
        await vm.snapshotInto(context.stagingDir, "Full");
        // Nothing may touch the rootfs after the snapshot: the VM goes now (and the disk is root's again).
        await vm.kill({ discard: true, graceMs: 1000 });
      },
    },
    {
      name: "build-record",
      async run(context) {
        const inputs = requireFromStep(context.inputs, "the template inputs");
        const staged = (name: string) => join(context.stagingDir, name);
        // Only the build's own files are published: not the VMs' logs, not the agent's vsock socket.
        for (const name of await readdir(context.stagingDir)) {
          if (name.endsWith(".log") || name === AGENT_VSOCK_SOCKET) await rm(staged(name), { force: true });
        }
        const memorySize = (await stat(staged(BUILD_FILES.memory))).size;
        // A Full snapshot: this build owns every page.
        const header = fullMemoryHeader({
          build: context.buildId,
          memorySize,
          blockSize: inputs.boot.hugePages === "2M" ? 2 * 1024 * 1024 : 4096,
        });
        await writeFile(staged(BUILD_FILES.header), encodeMemoryHeader(header));
        // The template resumes check CPU moves against: the custom one, or a static one's custom form.
        const kept = context.cpuTemplate ?? context.staticCustomForm;
        if (kept) await writeFile(staged(BUILD_FILES.cpuTemplate), JSON.stringify(kept));
        context.manifest = {
          schemaVersion: 1,
          id: context.buildId,
          kind: "template",
          template: context.request.name,
          createdAt: new Date().toISOString(),
          arch: context.config.targetArch,
          firecrackerVersion: inputs.boot.firecracker.version,
          jailed: context.vm?.jailed ?? false,
          boot: inputs.boot,
          hostFingerprint: fingerprintToFile(requireFromStep(context.fingerprint, "the host fingerprint")),
          ...(context.network ? { network: { tapName: context.network.tapName, guestMac: GUEST_MAC } } : {}),
          ...(context.request.egress ? { egress: context.request.egress } : {}),
          memory: { sizeBytes: memorySize, ownedBytes: memorySize },
          files: {} as BuildManifest["files"],
        };
      },
    },
    {
      name: "working-set",
      async run(context, { signal }) {
        if (context.options.workingSet === false) return;
        const inputs = requireFromStep(context.inputs, "the template inputs");
        const alive = context.options.workingSet?.alive;
        try {
          await recordWorkingSet({
            stagingDir: context.stagingDir,
            buildId: context.buildId,
            firecrackerBinary: inputs.artifacts.firecracker.path,
            config: context.config,
            launchMode: context.launchMode ?? (await launchModeFor(context.state)),
            uids: context.state.uidPool,
            ...(context.network ? { networkNamespace: context.network.name } : {}),
            ...(alive ? { until: alive } : {}),
            timeoutMs: context.config.readyTimeoutMs,
            logIntervalMs: context.config.waitLogIntervalMs,
            signal,
            ...(context.options.logger ? { logger: context.options.logger } : {}),
          });
        } catch (error) {
          if (signal.aborted) throw error;
          context.options.logger?.warn?.(
            { build: context.buildId, error: (error as Error).message },
            "recording the working set failed: the build is published without one (creates restore on demand)",
          );
          await rm(join(context.stagingDir, BUILD_FILES.workingSet), { force: true });
        }
      },
    },
    {
      name: "publish",
      async run(context) {
        const {
          files: _files,
          schemaVersion: _version,
          ...manifest
        } = requireFromStep(context.manifest, "the build record");
        context.manifest = await publishBuild(context.config, context.stagingDir, manifest);
        context.buildDir = buildDir(context.config, context.buildId);
      },
    },
    {
      name: "pointer",
      async run(context) {
        // The name moves last: a crash before this leaves the old template, and a build gc removes.
        await setTemplatePointer(context.config, context.request.name, context.buildId);
      },
    },
  ]);
}

/** A published template build: its id, directory, manifest and step timings. */
export interface BuiltTemplate {
  /** The build's id; the template name now points at it. */
  id: string;
  /** `builds/{id}`. */
  directory: string;
  manifest: BuildManifest;
  timings: StepRunResult["timings"];
}

/** Builds and publishes a template; a failure at any step removes everything the build made. */
export async function buildTemplate(
  state: OrchestratorState,
  options: BuildTemplateOptions,
): Promise<BuiltTemplate> {
  const request = parseTemplateRequest(options.request);
  return state.buildLimiter.run(async () => {
    const buildId = newBuildId();
    const context: TemplateBuildContext = {
      state,
      config: state.config,
      request,
      options,
      buildId,
      stagingDir: join(state.config.stateDir, "builds", `.staging-${buildId}`),
    };
    const defaults = defaultTemplateBuildSteps();
    const steps = options.steps ? options.steps(defaults) : defaults;
    // No jailer and no opt-out fails here, before the image is even pulled; anything else that stops a
    // VM (another arch's jailer, say) is the VM step's to report.
    if (steps.has("boot") || (steps.has("provision") && request.provisionScript !== undefined)) {
      try {
        context.launchMode = await launchModeFor(state);
      } catch (error) {
        if (error instanceof OrchestratorError && error.code === "NOT_AVAILABLE") throw error;
      }
    }
    const result = await runSteps(steps, context, {
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.onEvent ? { onEvent: options.onEvent } : {}),
    });
    // Success: the VM and the build network go; the published directory stays.
    await result.cleanup();
    if (!context.buildDir || !context.manifest) {
      throw new OrchestratorError("STEP_FAILED", "the build steps finished without publishing a build");
    }
    return { id: buildId, directory: context.buildDir, manifest: context.manifest, timings: result.timings };
  });
}

/** The build a template name points at now. */
export async function readTemplate(
  config: Pick<OrchestratorConfig, "stateDir">,
  name: string,
): Promise<{ id: string; directory: string; manifest: BuildManifest }> {
  const pointer = await readTemplatePointer(config, name);
  const manifest = await readBuild(config, pointer.build);
  return { id: pointer.build, directory: buildDir(config, pointer.build), manifest };
}

/**
 * Why the published template `name` must be rebuilt for `request`, or null when it is current. The
 * inputs are resolved by the function the build uses (the image is unpacked to a temp directory),
 * so the check can never compare other inputs than a build would use.
 */
export async function templateDrift(
  config: OrchestratorConfig,
  request: TemplateRequest,
  options: { resolver?: ArtifactResolver; signal?: AbortSignal } = {},
): Promise<string | null> {
  const parsed = parseTemplateRequest(request);
  let current: { directory: string; manifest: BuildManifest };
  try {
    current = await readTemplate(config, parsed.name);
  } catch (error) {
    if (error instanceof OrchestratorError && error.code === "TEMPLATE_NOT_FOUND")
      return "it does not exist yet";
    if (
      error instanceof OrchestratorError &&
      ["TEMPLATE_INVALID", "BUILD_INVALID", "BUILD_NOT_FOUND", "STATE_RECORD_INVALID"].includes(error.code)
    )
      return error.message;
    throw error;
  }
  const { manifest } = current;
  if (!manifest.boot) return `build ${manifest.id} was not built from an image`;
  await mkdir(templatesDir(config), { recursive: true, mode: 0o700 });
  const work = join(templatesDir(config), `.drift-${parsed.name}-${randomBytes(6).toString("hex")}`);
  try {
    const inputs = await resolveTemplateInputs(config, parsed, work, options);
    const differences = diffBootParameters(manifest.boot, inputs.boot);
    if (differences.length > 0) return describeDifferences(differences);
    if (Boolean(manifest.network) !== parsed.network)
      return `network: ${Boolean(manifest.network)} → ${parsed.network}`;
    const problems = await verifyTemplateFiles(current.directory, manifest, {
      digests: false,
    });
    return problems.length > 0 ? problems.join("; ") : null;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
