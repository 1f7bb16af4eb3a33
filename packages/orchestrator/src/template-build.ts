// Template build: a named StepList from an OCI image to a published, snapshotted template directory.
// Everything happens in a staging directory next to the templates; `publish` renames it into place,
// so a reader sees either the old template or the complete new one, never half of one.
import { randomBytes } from "node:crypto";
import { mkdir, open, readdir, readFile, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { hostArch, type Logger, sha256File } from "@sbx/arch";
import {
  type CpuTemplate,
  type Fingerprint,
  fingerprintToFile,
  hostFingerprint,
  parseCpuTemplate,
} from "@sbx/cpu-template";
import {
  configureAndStart,
  type FirecrackerProcess,
  type FullVmConfiguration,
  launchFirecracker,
} from "@sbx/fc-client";
import { buildExt4Image, parseProvisionExit, READY_MARKER, repairExt4 } from "@sbx/rootfs";
import { type ArtifactResolver, assertCanRunFirecracker } from "./boot-parameters.ts";
import type { OrchestratorConfig } from "./config.ts";
import { OrchestratorError } from "./errors.ts";
import { type NetworkNamespace, networkNamesFor } from "./network.ts";
import type { OrchestratorState } from "./orchestrator-state.ts";
import { allocateNetwork } from "./sandbox-steps.ts";
import { writeJsonAtomic } from "./state-dir.ts";
import { requireFromStep, runSteps, type StepEvent, StepList, type StepRunResult } from "./steps.ts";
import { describeDifferences, diffBootParameters, verifyTemplateFiles } from "./template-drift.ts";
import {
  type ParsedTemplateRequest,
  parseTemplateRequest,
  resolveTemplateInputs,
  type TemplateInputs,
  type TemplateRequest,
} from "./template-inputs.ts";
import { type TemplateManifest, templateManifestSchema } from "./template-manifest.ts";
import { wrapInVmNamespaces } from "./vm-namespace.ts";
import { startProgressLog, waitForConsoleLogged } from "./wait-for-line.ts";

/** File names inside a template directory. */
export const TEMPLATE_FILES = Object.freeze({
  manifest: "template.json",
  rootfs: "rootfs.ext4",
  vmstate: "vmstate",
  memory: "memory",
});

/** The guest MAC every sandbox has: clones share it, each in its own network namespace. */
export const GUEST_MAC = "06:00:c0:a8:f1:02";
export const GUEST_INTERFACE_ID = "eth0";
export const ROOTFS_DRIVE_ID = "rootfs";

export function templatesDir(config: Pick<OrchestratorConfig, "stateDir">): string {
  return join(config.stateDir, "templates");
}

/**
 * The rootfs path every VM of this state directory is told. On the host it is an empty placeholder;
 * each VM's private mount namespace binds its own disk over it (snapshots reopen disks by path).
 */
export function diskSlotPath(config: Pick<OrchestratorConfig, "stateDir">): string {
  return join(config.stateDir, "disk-slot", TEMPLATE_FILES.rootfs);
}

export async function ensureDiskSlot(config: Pick<OrchestratorConfig, "stateDir">): Promise<string> {
  const path = diskSlotPath(config);
  await mkdir(join(config.stateDir, "disk-slot"), { recursive: true, mode: 0o700 });
  await (await open(path, "a", 0o600)).close();
  return path;
}

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
}

export interface TemplateBuildContext {
  state: OrchestratorState;
  config: OrchestratorConfig;
  request: ParsedTemplateRequest;
  options: BuildTemplateOptions;
  /** `{templates}/.build-{name}-{random}`: removed on failure, renamed into place by publish. */
  stagingDir: string;
  inputs?: TemplateInputs;
  rootfsPath?: string;
  cpuTemplate?: CpuTemplate;
  fingerprint?: Fingerprint;
  network?: NetworkNamespace;
  firecracker?: FirecrackerProcess;
  manifest?: TemplateManifest;
  /** Set by publish: the template's final directory. */
  templateDir?: string;
}

/** Firecracker's whole VM description for a template boot (the provisioning one or the final one). */
export function templateVmConfig(context: TemplateBuildContext, bootArgs: string): FullVmConfiguration {
  const { boot } = requireFromStep(context.inputs, "the template inputs");
  const cpu = boot.cpuTemplate;
  const config: FullVmConfiguration = {
    "boot-source": { kernel_image_path: boot.kernel.path, boot_args: bootArgs },
    "machine-config": {
      vcpu_count: boot.vcpuCount,
      mem_size_mib: boot.memoryMib,
      smt: boot.smt,
      huge_pages: boot.hugePages,
      ...(cpu.kind === "static" ? { cpu_template: cpu.name as "C3" } : {}),
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
  if (context.network) {
    config["network-interfaces"] = [
      { iface_id: GUEST_INTERFACE_ID, host_dev_name: context.network.tapName, guest_mac: GUEST_MAC },
    ];
  }
  return config;
}

async function launchTemplateVm(context: TemplateBuildContext, id: string, signal: AbortSignal) {
  const binary = requireFromStep(context.inputs, "the template inputs").artifacts.firecracker.path;
  const wrapped = wrapInVmNamespaces(binary, {
    ...(context.network ? { networkNamespace: context.network.name } : {}),
    binds: [
      { source: requireFromStep(context.rootfsPath, "the rootfs"), target: diskSlotPath(context.config) },
    ],
  });
  return launchFirecracker({
    ...wrapped,
    id,
    arch: context.config.targetArch,
    logPath: join(context.stagingDir, `${id}.log`),
    signal,
  });
}

function epochArgument(): string {
  return `sbx.epoch=${Math.floor(Date.now() / 1000)}`;
}

export function defaultTemplateBuildSteps(): StepList<TemplateBuildContext> {
  return new StepList<TemplateBuildContext>([
    {
      name: "staging",
      async run(context) {
        await mkdir(templatesDir(context.config), { recursive: true, mode: 0o700 });
        await mkdir(context.stagingDir, { mode: 0o700 });
        return () => rm(context.stagingDir, { recursive: true, force: true });
      },
    },
    {
      name: "inputs",
      async run(context, { signal }) {
        context.inputs = await resolveTemplateInputs(
          context.config,
          context.request,
          join(context.stagingDir, "work"),
          { signal, ...(context.options.resolver ? { resolver: context.options.resolver } : {}) },
        );
      },
    },
    {
      name: "rootfs",
      async run(context) {
        const inputs = requireFromStep(context.inputs, "the template inputs");
        const output = join(context.stagingDir, TEMPLATE_FILES.rootfs);
        await buildExt4Image({ sourceDir: inputs.rootDir, output, size: "auto", label: "rootfs" });
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
          context.cpuTemplate = parseCpuTemplate(JSON.parse(text));
        }
        // Another arch's template can get its rootfs here, but only its own hosts can fingerprint and boot it.
        if (context.config.targetArch === hostArch()) context.fingerprint = hostFingerprint();
      },
    },
    {
      name: "network",
      async run(context, { signal }) {
        if (!context.request.network) return;
        const names = networkNamesFor(`build-${randomBytes(4).toString("hex")}`);
        const { network, release } = await allocateNetwork(context.state, names, { signal });
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
        await using fc = await launchTemplateVm(context, "provision", signal);
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
        const fc = await launchTemplateVm(context, "template", signal);
        context.firecracker = fc;
        try {
          await configureAndStart(
            fc.client,
            templateVmConfig(context, `${inputs.boot.kernelCommandLine} ${epochArgument()}`),
            { signal },
          );
        } catch (error) {
          await fc.kill({ discard: true });
          throw error;
        }
        return async () => {
          await fc.kill({ discard: true, graceMs: 1000 });
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
        const fc = requireFromStep(context.firecracker, "the template VM");
        await fc.client.patchVm({ state: "Paused" });
        // Full: the template is the base every sandbox's memory is layered on.
        await fc.client.createSnapshot({
          snapshot_type: "Full",
          snapshot_path: join(context.stagingDir, TEMPLATE_FILES.vmstate),
          mem_file_path: join(context.stagingDir, TEMPLATE_FILES.memory),
        });
        // Nothing may touch the rootfs after the snapshot: the VM goes now.
        await fc.kill({ discard: true, graceMs: 1000 });
      },
    },
    {
      name: "manifest",
      async run(context) {
        const inputs = requireFromStep(context.inputs, "the template inputs");
        const file = async (name: string) => ({
          file: name,
          sizeBytes: (await stat(join(context.stagingDir, name))).size,
          sha256: await sha256File(join(context.stagingDir, name)),
        });
        const [rootfs, vmstate, memory] = await Promise.all([
          file(TEMPLATE_FILES.rootfs),
          file(TEMPLATE_FILES.vmstate),
          file(TEMPLATE_FILES.memory),
        ]);
        const manifest = templateManifestSchema.parse({
          schemaVersion: 1,
          name: context.request.name,
          createdAt: new Date().toISOString(),
          boot: inputs.boot,
          hostFingerprint: fingerprintToFile(requireFromStep(context.fingerprint, "the host fingerprint")),
          rootfs,
          snapshot: { vmstate, memory },
          ...(context.network ? { network: { tapName: context.network.tapName, guestMac: GUEST_MAC } } : {}),
        });
        await writeJsonAtomic(join(context.stagingDir, TEMPLATE_FILES.manifest), manifest);
        context.manifest = manifest;
      },
    },
    {
      name: "publish",
      async run(context) {
        for (const name of await readdir(context.stagingDir)) {
          if (name.endsWith(".log")) await rm(join(context.stagingDir, name), { force: true });
        }
        context.templateDir = await publishDirectory(
          context.stagingDir,
          join(templatesDir(context.config), context.request.name),
        );
      },
    },
  ]);
}

/**
 * Moves `staging` to `target`. rename(2) cannot replace a non-empty directory, so an existing
 * template is first renamed aside and removed after; running sandboxes keep their open files.
 */
async function publishDirectory(staging: string, target: string): Promise<string> {
  const aside = `${target}.old-${randomBytes(4).toString("hex")}`;
  let movedAside = false;
  try {
    await rename(target, aside);
    movedAside = true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
  try {
    await rename(staging, target);
  } catch (error) {
    if (movedAside) await rename(aside, target);
    throw error;
  }
  if (movedAside) await rm(aside, { recursive: true, force: true });
  return target;
}

export interface BuiltTemplate {
  directory: string;
  manifest: TemplateManifest;
  timings: StepRunResult["timings"];
}

/** Builds and publishes a template; a failure at any step removes everything the build made. */
export async function buildTemplate(
  state: OrchestratorState,
  options: BuildTemplateOptions,
): Promise<BuiltTemplate> {
  const request = parseTemplateRequest(options.request);
  return state.buildLimiter.run(async () => {
    const context: TemplateBuildContext = {
      state,
      config: state.config,
      request,
      options,
      stagingDir: join(
        templatesDir(state.config),
        `.build-${request.name}-${randomBytes(6).toString("hex")}`,
      ),
    };
    const defaults = defaultTemplateBuildSteps();
    const steps = options.steps ? options.steps(defaults) : defaults;
    const result = await runSteps(steps, context, {
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.onEvent ? { onEvent: options.onEvent } : {}),
    });
    // Success: the VM and the build network go; the published directory stays.
    await result.cleanup();
    if (!context.templateDir || !context.manifest) {
      throw new OrchestratorError("STEP_FAILED", "the build steps finished without publishing a template");
    }
    return { directory: context.templateDir, manifest: context.manifest, timings: result.timings };
  });
}

/** Reads and validates `{templates}/{name}/template.json`. */
export async function readTemplate(
  config: Pick<OrchestratorConfig, "stateDir">,
  name: string,
): Promise<{ directory: string; manifest: TemplateManifest }> {
  const directory = join(templatesDir(config), name);
  let text: string;
  try {
    text = await readFile(join(directory, TEMPLATE_FILES.manifest), "utf8");
  } catch (error) {
    throw new OrchestratorError("TEMPLATE_NOT_FOUND", `no template "${name}" in ${templatesDir(config)}`, {
      cause: error,
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new OrchestratorError("TEMPLATE_INVALID", `${directory}/${TEMPLATE_FILES.manifest} is not JSON`, {
      cause: error,
    });
  }
  const parsed = templateManifestSchema.safeParse(json);
  if (!parsed.success) {
    throw new OrchestratorError(
      "TEMPLATE_INVALID",
      `${directory}/${TEMPLATE_FILES.manifest} is not a valid template`,
      {
        cause: parsed.error,
      },
    );
  }
  return { directory, manifest: parsed.data };
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
  let manifest: TemplateManifest;
  try {
    manifest = (await readTemplate(config, parsed.name)).manifest;
  } catch (error) {
    if (error instanceof OrchestratorError && error.code === "TEMPLATE_NOT_FOUND")
      return "it does not exist yet";
    if (error instanceof OrchestratorError && error.code === "TEMPLATE_INVALID") return error.message;
    throw error;
  }
  const work = join(templatesDir(config), `.drift-${parsed.name}-${randomBytes(6).toString("hex")}`);
  try {
    const inputs = await resolveTemplateInputs(config, parsed, work, options);
    const differences = diffBootParameters(manifest.boot, inputs.boot);
    if (differences.length > 0) return describeDifferences(differences);
    if (Boolean(manifest.network) !== parsed.network)
      return `network: ${Boolean(manifest.network)} → ${parsed.network}`;
    const problems = await verifyTemplateFiles(join(templatesDir(config), parsed.name), manifest, {
      digests: false,
    });
    return problems.length > 0 ? problems.join("; ") : null;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
