// Everything a template is made of, resolved by one function for both the build and the drift check:
// a drift check that looked at other inputs than the build would silently reuse a stale template.
import { mkdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { ensureAgentBinary } from "@sbx/agent";
import {
  buildKernelCmdline,
  GUEST_INIT,
  injectGuestFiles,
  type RegistryAuth,
  readOciLayout,
  resolveBusybox,
  type UnpackProgress,
  unpackImage,
} from "@sbx/rootfs";
import { z } from "zod";
import {
  type ArtifactResolver,
  type BootArtifacts,
  defaultArtifactResolver,
  resolveBootParameters,
  type TemplateSpec,
} from "./boot-parameters.ts";
import type { OrchestratorConfig } from "./config.ts";
import { dockerCredentialsFromEnv } from "./docker-config.ts";
import { egressPolicySchema } from "./egress-policy.ts";
import { OrchestratorError } from "./errors.ts";
import { guestResolvers } from "./host-resolvers.ts";
import { parsePlatformOverride, resolveImageSource } from "./image-source.ts";
import type { ProgressEvent } from "./progress.ts";
import { type BootParameters, templateName } from "./template-manifest.ts";

/** What a caller asks for; everything else comes from the config and the artifacts. */
export const templateRequestSchema = z.object({
  name: templateName,
  /**
   * An OCI image layout directory (e.g. from `skopeo copy docker://alpine oci:./alpine`), or an image
   * reference (`docker.io/library/alpine:3.20`, `localhost:5000/x@sha256:…`), pulled with Docker's
   * credentials into `{stateDir}/images/`. A path that exists, or starts with `/` or `.`, is a layout.
   */
  ociLayout: z.string().min(1),
  /** `os/arch[/variant]` to pull and unpack (default: the target arch); its arch must be the target's. */
  platform: z.string().min(1).optional(),
  /** Pick an image of the layout by its `org.opencontainers.image.ref.name`. */
  tag: z.string().min(1).optional(),
  vcpuCount: z.number().int().min(1).max(32).optional(),
  memoryMib: z.number().int().min(16).optional(),
  smt: z.boolean().optional(),
  hugePages: z.enum(["None", "2M"]).optional(),
  /** Runs once, in a provisioning boot before the snapshotted boot (e.g. `apk add curl`). */
  provisionScript: z.string().optional(),
  /** Replaces the command line sbx derives (console, network, init). */
  kernelCommandLine: z.string().optional(),
  /** Give the VM a network interface on the sandbox TAP (default true). */
  network: z.boolean().default(true),
  /** What sandboxes of this template may reach (a create's policy layers on top); default the config's. */
  egress: egressPolicySchema.optional(),
  /**
   * A balloon device with free page reporting: idle guests give freed memory back to the host (their
   * kernel needs CONFIG_PAGE_REPORTING), and admission packs them by `balloonMemoryOvercommit`.
   */
  balloon: z
    .object({
      freePageReporting: z.boolean().default(true),
      statsPollingIntervalS: z.number().int().min(0).max(3600).default(0),
    })
    .optional(),
});
/** A template build request as written: image, name, resources, provisioning, egress, balloon. */
export type TemplateRequest = z.input<typeof templateRequestSchema>;
export type ParsedTemplateRequest = z.output<typeof templateRequestSchema>;

/** Validates a template request (`INVALID_OPTIONS` naming each bad field) and fills its defaults. */
export function parseTemplateRequest(request: TemplateRequest): ParsedTemplateRequest {
  const parsed = templateRequestSchema.safeParse(request);
  if (!parsed.success) {
    throw new OrchestratorError("INVALID_OPTIONS", `template request: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
    });
  }
  return parsed.data;
}

/** Everything a template is made of, resolved: artifacts, spec, boot parameters and the rootfs content. */
export interface TemplateInputs {
  artifacts: BootArtifacts;
  spec: TemplateSpec;
  boot: BootParameters;
  /** The unpacked image with sbx's guest files: the rootfs content. */
  rootDir: string;
  /** The guest's `init=`. */
  init: string;
}

/**
 * Resolves the artifacts, unpacks the image into `workDir/root` and injects the guest files, then
 * turns it all into boot parameters. The build goes on to make the ext4 image from `rootDir`; the
 * drift check compares `boot` with template.json and throws the directory away.
 */
export async function resolveTemplateInputs(
  config: OrchestratorConfig,
  request: ParsedTemplateRequest,
  workDir: string,
  options: {
    resolver?: ArtifactResolver;
    signal?: AbortSignal;
    /** Registry credentials for image references (default: Docker's config and credential helpers). */
    credentials?: (registry: string) => Promise<RegistryAuth | undefined>;
    onProgress?: (event: ProgressEvent) => void;
  } = {},
): Promise<TemplateInputs> {
  // The image first: a wrong path or reference is the most likely mistake, and the cheapest to report.
  const platform = request.platform
    ? parsePlatformOverride(request.platform, config.targetArch)
    : config.targetArch;
  const image = await resolveImageSource(request.ociLayout, {
    platform,
    cacheDir: join(config.stateDir, "images"),
    credentials: options.credentials ?? dockerCredentialsFromEnv(),
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  const tag = request.tag ?? image.tag;
  const layout = await readOciLayout(image.layoutDir);
  const artifacts = await (options.resolver ?? defaultArtifactResolver).resolve(config);
  const busybox = await resolveBusybox({
    dir: config.busyboxDir,
    version: config.busyboxVersion,
    arch: config.targetArch,
  });
  const rootDir = join(workDir, "root");
  await mkdir(workDir, { recursive: true, mode: 0o700 });
  await rm(rootDir, { recursive: true, force: true });
  const unpacked = await unpackImage({
    layout,
    platform,
    dest: rootDir,
    // Layers are untrusted: bombs of bytes, entries or path depth stop at the configured limits.
    limits: {
      maxUncompressedBytes: config.unpackMaxBytes,
      maxEntries: config.unpackMaxEntries,
      maxPathDepth: config.unpackMaxPathDepth,
    },
    ...(tag === undefined ? {} : { tag }),
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.onProgress
      ? {
          onProgress: (progress: UnpackProgress) =>
            options.onProgress?.({
              task: `layer ${progress.layerIndex + 1}/${progress.layerCount} ${progress.digest.slice(7, 19)}`,
              phase: "unpack",
              bytes: progress.bytes,
              totalBytes: progress.totalBytes,
              done: progress.done,
            }),
        }
      : {}),
  });
  // The in-guest agent (commands, files) is built from source for the target arch, once per version.
  const agent = await ensureAgentBinary(config.targetArch);
  const injected = await injectGuestFiles({
    root: rootDir,
    busybox,
    agent: { path: agent.path, version: agent.version, sha256: agent.sha256, arch: agent.arch },
    ...(request.provisionScript === undefined ? {} : { provisionScript: request.provisionScript }),
  });
  const initScript = await readFile(join(rootDir, GUEST_INIT), "utf8");
  const spec: TemplateSpec = {
    ociManifestDigest: unpacked.manifestDigest,
    ...(request.vcpuCount === undefined ? {} : { vcpuCount: request.vcpuCount }),
    ...(request.memoryMib === undefined ? {} : { memoryMib: request.memoryMib }),
    ...(request.smt === undefined ? {} : { smt: request.smt }),
    ...(request.hugePages === undefined ? {} : { hugePages: request.hugePages }),
    kernelCommandLine:
      request.kernelCommandLine ?? (await defaultCommandLine(config, injected.init, request.network)),
    initScript,
    guestFilesSha256: injected.guestFilesSha256,
    ...(request.provisionScript === undefined ? {} : { provisionScript: request.provisionScript }),
    ...(request.balloon === undefined ? {} : { balloon: request.balloon }),
  };
  // The artifacts were just resolved and digested: resolve them once, not twice.
  const boot = await resolveBootParameters(config, spec, { resolve: async () => artifacts });
  if (boot.busybox.sha256 !== busybox.sha256) {
    throw new OrchestratorError(
      "TEMPLATE_INVALID",
      `the busybox the rootfs got (${busybox.path}) is not the one the artifact resolver digested`,
    );
  }
  return { artifacts, spec, boot, rootDir, init: injected.init };
}

/**
 * The recorded command line: no boot-time values (clock, provisioning flag), so it can drift-check. A
 * guest with a NIC gets the resolvers (the init writes them to /etc/resolv.conf) so provisioning can
 * install packages.
 */
async function defaultCommandLine(
  config: OrchestratorConfig,
  init: string,
  network: boolean,
): Promise<string> {
  const { tapSubnet, tapAddress, guestAddress } = config.addresses;
  const dns = network ? (await guestResolvers(config)).slice(0, 2) : [];
  return buildKernelCmdline({
    arch: config.targetArch,
    init,
    ...(network
      ? {
          network: {
            clientIp: guestAddress,
            gatewayIp: tapAddress,
            prefixLength: tapSubnet.prefixLength,
            dns,
          },
        }
      : {}),
  });
}
