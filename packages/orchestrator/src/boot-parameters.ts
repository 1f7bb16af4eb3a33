import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  type Arch,
  archTraits,
  checkKernelImage,
  detectBinaryArch,
  hostArch,
  type ResolveArtifactOptions,
  resolveArtifact,
  sha256File,
} from "@sbx/arch";
import { z } from "zod";
import type { OrchestratorConfig } from "./config.ts";
import { OrchestratorError } from "./errors.ts";
import { runCommand } from "./exec.ts";
import {
  type BootParameters,
  balloonSettingsSchema,
  bootParametersSchema,
  type CpuTemplateRecord,
} from "./template-manifest.ts";

/** How every template's ext4 image is made (a build input: a change rebuilds templates). */
export const TEMPLATE_EXT4_OPTIONS = Object.freeze({ size: "auto", label: "rootfs" });

/** This package's version, read from its package.json (next to src/ and dist/ alike). */
export const SBX_VERSION: string = (() => {
  const here = typeof __filename === "string" ? __filename : fileURLToPath(import.meta.url);
  return (JSON.parse(readFileSync(join(dirname(here), "..", "package.json"), "utf8")) as { version: string })
    .version;
})();

/** The kernel command line when the template spec gives none (serial console, reboot = exit). */
export const DEFAULT_KERNEL_COMMAND_LINE: Readonly<Record<Arch, string>> = Object.freeze({
  amd64: "console=ttyS0 reboot=k panic=1 pci=off",
  arm64: "keep_bootcon console=ttyS0 reboot=k panic=1",
});

/** What a caller asks a template to be; the rest comes from the config and the artifacts. */
export const templateSpecSchema = z.object({
  ociManifestDigest: z.string().regex(/^sha256:[0-9a-f]{64}$/),
  vcpuCount: z.number().int().min(1).max(32).default(2),
  memoryMib: z.number().int().min(16).default(512),
  smt: z.boolean().default(false),
  hugePages: z.enum(["None", "2M"]).default("None"),
  kernelCommandLine: z.string().optional(),
  /** The init script's content, exactly as it goes into the rootfs. */
  initScript: z.string(),
  /** `injectGuestFiles`' digest of every guest file sbx generates. */
  guestFilesSha256: z
    .string()
    .regex(/^[0-9a-f]{64}$/)
    .optional(),
  provisionScript: z.string().optional(),
  balloon: balloonSettingsSchema.optional(),
});
export type TemplateSpec = z.input<typeof templateSpecSchema>;

export interface BootArtifacts {
  firecracker: { path: string; version: string; sha256: string };
  kernel: { path: string; sha256: string };
  busybox: { path: string; version: string; sha256: string };
  customCpuTemplate?: { path: string; sha256: string };
}

/** Finds and digests the artifacts a template is built from; replace it in tests or forks. */
export interface ArtifactResolver {
  resolve(config: OrchestratorConfig): Promise<BootArtifacts>;
}

/** Parses `Firecracker v1.14.2` from `firecracker --version`; undefined when it cannot run here. */
export async function firecrackerVersionOf(path: string): Promise<string | undefined> {
  try {
    const { stdout } = await runCommand([path, "--version"], { timeoutMs: 5_000 });
    return /Firecracker (v\d+\.\d+\.\d+\S*)/.exec(stdout)?.[1];
  } catch {
    return undefined;
  }
}

/** A binary named by a variable (FIRECRACKER_BIN, JAILER_BIN): it must be built for the target arch. */
export async function archCheckedBinary(
  variable: string,
  path: string,
  targetArch: OrchestratorConfig["targetArch"],
): Promise<{ path: string; sha256: string }> {
  const detected = await detectBinaryArch(path);
  if (detected.arch !== targetArch) {
    throw new OrchestratorError(
      "ARCH_MISMATCH",
      `${variable} ${path} is a ${detected.arch} binary, but the target arch is ${targetArch}`,
      { details: { path, detected: detected.arch, target: targetArch } },
    );
  }
  return { path, sha256: await sha256File(path) };
}

/** The Firecracker binary: FIRECRACKER_BIN if set, else `{firecrackerRoot}/{version}/{arch}/firecracker`. */
export async function resolveFirecrackerBinary(
  config: OrchestratorConfig,
): Promise<{ path: string; sha256: string }> {
  if (config.firecrackerBin) {
    return archCheckedBinary("FIRECRACKER_BIN", config.firecrackerBin, config.targetArch);
  }
  return resolveDigestedArtifact({
    root: config.firecrackerRoot,
    version: config.firecrackerVersion,
    name: "firecracker",
    arch: config.targetArch,
    checksum: { kind: "sidecar", allowUnverified: true },
  });
}

/**
 * `resolveArtifact` with a checksum rule, whose result always has the file's sha256 (its type has
 * `sha256` optional because a lookup without a rule digests nothing).
 */
export async function resolveDigestedArtifact(
  options: ResolveArtifactOptions & { checksum: NonNullable<ResolveArtifactOptions["checksum"]> },
): Promise<{ path: string; sha256: string }> {
  const resolved = await resolveArtifact(options);
  if (resolved.sha256 === undefined) {
    throw new OrchestratorError(
      "ARTIFACT_INVALID",
      `${resolved.path} was resolved with a checksum rule but without its sha256; @sbx/arch's resolveArtifact broke its contract`,
      { details: { path: resolved.path } },
    );
  }
  return { path: resolved.path, sha256: resolved.sha256 };
}

/** The kernel at `{kernelRoot}/{version}/{arch}/{kernelName}`, format-checked for the arch. */
export async function resolveKernel(config: OrchestratorConfig): Promise<{ path: string; sha256: string }> {
  const resolved = await resolveDigestedArtifact({
    root: config.kernelRoot,
    version: config.kernelVersion,
    name: config.kernelName,
    arch: config.targetArch,
    verifyArch: false,
    checksum: { kind: "sidecar", allowUnverified: true },
  });
  await checkKernelImage(resolved.path, config.targetArch);
  return resolved;
}

/** Busybox at `{busyboxDir}/{version}/{arch}/busybox`; its sha256 sidecar is required. */
export async function resolveBusyboxArtifact(
  config: OrchestratorConfig,
): Promise<{ path: string; version: string; sha256: string }> {
  const resolved = await resolveDigestedArtifact({
    root: config.busyboxDir,
    version: config.busyboxVersion,
    name: "busybox",
    arch: config.targetArch,
    checksum: { kind: "sidecar" },
  });
  return { ...resolved, version: config.busyboxVersion };
}

/** Resolves every artifact with @sbx/arch's arch-aware lookup and checks; digests each file. */
export const defaultArtifactResolver: ArtifactResolver = {
  async resolve(config) {
    const firecracker = await resolveFirecrackerBinary(config);
    const version =
      config.targetArch === hostArch() ? await firecrackerVersionOf(firecracker.path) : undefined;
    return withConfiguredParts(config, {
      firecracker: { ...firecracker, version: version ?? config.firecrackerVersion },
      kernel: await resolveKernel(config),
    });
  },
};

/** Adds what always comes from the config: busybox and, when configured, the custom CPU template. */
async function withConfiguredParts(
  config: OrchestratorConfig,
  artifacts: Pick<BootArtifacts, "firecracker" | "kernel">,
): Promise<BootArtifacts> {
  const resolved: BootArtifacts = { ...artifacts, busybox: await resolveBusyboxArtifact(config) };
  if (config.cpuTemplate.kind === "custom") {
    resolved.customCpuTemplate = {
      path: config.cpuTemplate.path,
      sha256: await sha256File(config.cpuTemplate.path),
    };
  }
  return resolved;
}

/**
 * Busybox (and a custom CPU template) from the config as usual, but the kernel and Firecracker from
 * these paths, digested like the rest: kernels built outside the artifact root, a test guest, or a
 * Firecracker binary of your own. Without `firecracker`, the configured one.
 */
export function artifactResolverWith(paths: {
  kernel: string;
  firecracker?: string | undefined;
}): ArtifactResolver {
  return {
    async resolve(config) {
      const firecracker = paths.firecracker
        ? { path: paths.firecracker, sha256: await sha256File(paths.firecracker) }
        : await resolveFirecrackerBinary(config);
      return withConfiguredParts(config, {
        firecracker: {
          ...firecracker,
          version: (await firecrackerVersionOf(firecracker.path)) ?? config.firecrackerVersion,
        },
        kernel: { path: paths.kernel, sha256: await sha256File(paths.kernel) },
      });
    },
  };
}

function sha256Text(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/**
 * The one function that turns config + spec + artifacts into the boot parameters. The template
 * build records its result in template.json; the drift check calls it again and compares, so the
 * check can never look at other inputs than the build used.
 */
export async function resolveBootParameters(
  config: OrchestratorConfig,
  specInput: TemplateSpec,
  resolver: ArtifactResolver = defaultArtifactResolver,
): Promise<BootParameters> {
  const parsed = templateSpecSchema.safeParse(specInput);
  if (!parsed.success) {
    throw new OrchestratorError("INVALID_OPTIONS", `template spec: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
    });
  }
  const spec = parsed.data;
  const traits = archTraits(config.targetArch);
  if (spec.smt && !traits.smtSupported) {
    throw new OrchestratorError(
      "INVALID_OPTIONS",
      `SMT is not supported on ${config.targetArch} (Firecracker rejects smt: true there); set smt: false`,
    );
  }
  const artifacts = await resolver.resolve(config);
  let cpuTemplate: CpuTemplateRecord;
  if (config.cpuTemplate.kind === "custom") {
    if (!artifacts.customCpuTemplate) {
      throw new OrchestratorError(
        "INVALID_OPTIONS",
        "the artifact resolver returned no digest for the custom CPU template",
      );
    }
    cpuTemplate = { kind: "custom", ...artifacts.customCpuTemplate };
  } else {
    cpuTemplate = config.cpuTemplate;
  }
  return bootParametersSchema.parse({
    arch: config.targetArch,
    firecracker: { version: artifacts.firecracker.version, sha256: artifacts.firecracker.sha256 },
    kernel: artifacts.kernel,
    kernelCommandLine: spec.kernelCommandLine ?? DEFAULT_KERNEL_COMMAND_LINE[config.targetArch],
    vcpuCount: spec.vcpuCount,
    memoryMib: spec.memoryMib,
    smt: spec.smt,
    hugePages: spec.hugePages,
    cpuTemplate,
    ociManifestDigest: spec.ociManifestDigest,
    busybox: { version: artifacts.busybox.version, sha256: artifacts.busybox.sha256 },
    initScriptSha256: sha256Text(spec.initScript),
    guestFilesSha256: spec.guestFilesSha256 ?? null,
    ext4: TEMPLATE_EXT4_OPTIONS,
    sbxVersion: SBX_VERSION,
    provisionScriptSha256: spec.provisionScript === undefined ? null : sha256Text(spec.provisionScript),
    ...(spec.balloon ? { balloon: spec.balloon } : {}),
  });
}

/** Steps that run Firecracker call this: a VM of another arch cannot run on this host. */
export function assertCanRunFirecracker(config: OrchestratorConfig, host: Arch = hostArch()): void {
  if (config.targetArch !== host) {
    throw new OrchestratorError(
      "ARCH_MISMATCH",
      `the target arch is ${config.targetArch} but this host is ${host}: Firecracker runs only VMs of the host's arch. Building a rootfs for ${config.targetArch} works here; boot and snapshot it on a ${config.targetArch} host`,
      { details: { target: config.targetArch, host } },
    );
  }
}
