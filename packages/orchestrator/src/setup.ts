// `sbx setup`: Firecracker, jailer and a guest kernel fetched, verified and installed into the
// arch-aware artifact layout that boot-parameters.ts resolves.
import { mkdir, mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { basename, isAbsolute, join } from "node:path";
import {
  type Arch,
  ArchError,
  archSchema,
  archTraits,
  checkKernelImage,
  detectBinaryArch,
  type Logger,
  parseSha256Sidecar,
  sha256File,
  sha256HexSchema,
  silentLogger,
  verifyChecksum,
} from "@sbx/arch";
import type { Dispatcher } from "undici";
import { z } from "zod";
import { resolveFirecrackerBinary, resolveKernel } from "./boot-parameters.ts";
import { ARCH_DEFAULTS, CONFIG_DEFAULTS, type OrchestratorConfig } from "./config.ts";
import {
  createDispatcher,
  type DownloadProgress,
  downloadResumable,
  fetchSmall,
  type HttpOptions,
  proxySettingsSchema,
  withDownloadLock,
} from "./download.ts";
import { OrchestratorError } from "./errors.ts";
import { installVerifiedFile } from "./install-file.ts";
import type { ProgressEvent } from "./progress.ts";
import { extractTarMembers } from "./release-tarball.ts";

/** Where Firecracker publishes release tarballs: `{base}/v{version}/firecracker-v{version}-{uname arch}.tgz`. */
export const DEFAULT_RELEASE_BASE_URL =
  "https://github.com/firecracker-microvm/firecracker/releases/download";
/**
 * The bucket of Firecracker's CI artifacts, where its getting-started guide finds guest kernels:
 * `{bucket}/firecracker-ci/v{major.minor}/{uname arch}/vmlinux-{kernel version}`, listed with
 * `?list-type=2&prefix=…` (S3 ListObjectsV2).
 */
export const DEFAULT_KERNEL_BUCKET_URL = "https://s3.amazonaws.com/spec.ccfc.min";

const MAX_BINARY_BYTES = 512 * 1024 * 1024;
const MAX_SMALL_BYTES = 1024 * 1024;

const absolutePath = z.string().min(1).refine(isAbsolute, "must be an absolute path");
const httpUrl = z.url({ protocol: /^https?$/ });

export const setupOptionsSchema = z.object({
  arch: archSchema,
  /** `v1.14.2` or `1.14.2`; installed under the `v`-prefixed name, as FIRECRACKER_VERSION spells it. */
  firecrackerVersion: z
    .string()
    .trim()
    .regex(/^v?\d+\.\d+\.\d+$/, "a Firecracker release version looks like v1.14.2")
    .transform((version) => (version.startsWith("v") ? version : `v${version}`)),
  firecrackerRoot: absolutePath,
  kernelRoot: absolutePath,
  /** The kernel line and directory label (KERNEL_VERSION), e.g. `6.1`: the newest 6.1.x is fetched. */
  kernelVersion: z
    .string()
    .trim()
    .regex(/^\d+\.\d+(\.\d+)?$/, "a kernel version looks like 6.1 or 6.1.141"),
  /** The installed kernel's file name (KERNEL_NAME); default per arch (vmlinux, Image). */
  kernelName: z
    .string()
    .regex(/^[A-Za-z0-9._-]+$/)
    .refine((name) => name !== "." && name !== "..")
    .optional(),
  releaseBaseUrl: httpUrl.default(DEFAULT_RELEASE_BASE_URL),
  kernelBucketUrl: httpUrl.default(DEFAULT_KERNEL_BUCKET_URL),
  /** A kernel to fetch instead of the newest CI kernel of the line. */
  kernelUrl: httpUrl.optional(),
  /** The kernel's expected sha256 (Firecracker publishes none for its CI kernels). */
  kernelSha256: sha256HexSchema.optional(),
  /** Expected digests by file name (release tarballs, kernels); they win over published sums. */
  pinnedSha256: z.record(z.string(), sha256HexSchema).default({}),
  /** Take the files from this directory (same names as on the server) instead of downloading. */
  from: absolutePath.optional(),
  /** Where downloads are kept until installed, so an interrupted one resumes (default `{firecrackerRoot}/.downloads`). */
  downloadDir: absolutePath.optional(),
  proxy: proxySettingsSchema.optional(),
  firecracker: z.boolean().default(true),
  kernel: z.boolean().default(true),
  /** Reinstall even when the installed files verify. */
  force: z.boolean().default(false),
  retries: z.number().int().min(0).max(20).default(4),
  retryDelayMs: z.number().int().min(0).default(250),
});
export type SetupOptions = z.input<typeof setupOptionsSchema>;

export type SetupStatus = "installed" | "present";
/** published: the release's own sha256 file; pinned: a digest given to setup; unpinned: none known. */
export type SetupVerification = "published" | "pinned" | "unpinned" | "sidecar";

export interface InstalledArtifact {
  path: string;
  sha256: string;
  status: SetupStatus;
  verification: SetupVerification;
  source?: string;
}

export interface SetupResult {
  arch: Arch;
  firecrackerVersion: string;
  kernelVersion: string;
  firecracker?: InstalledArtifact;
  jailer?: InstalledArtifact;
  kernel?: InstalledArtifact;
}

export interface SetupRuntime {
  onProgress?: (event: ProgressEvent) => void;
  signal?: AbortSignal;
  logger?: Logger;
}

/** `v1.14.2` → `v1.14`: the CI artifacts are grouped by minor release. */
export function ciVersionOf(firecrackerVersion: string): string {
  return firecrackerVersion.replace(/^v?(\d+\.\d+)\..*$/, "v$1");
}

export function releaseTarballName(firecrackerVersion: string, arch: Arch): string {
  return `firecracker-${firecrackerVersion}-${archTraits(arch).unameMachine}.tgz`;
}

/** The members of a release tarball that setup installs, by installed name. */
export function releaseMembers(
  firecrackerVersion: string,
  arch: Arch,
): Record<"firecracker" | "jailer", string> {
  const tag = `${firecrackerVersion}-${archTraits(arch).unameMachine}`;
  return {
    firecracker: `release-${tag}/firecracker-${tag}`,
    jailer: `release-${tag}/jailer-${tag}`,
  };
}

function compareVersions(a: string, b: string): number {
  const left = a.split(".").map(Number);
  const right = b.split(".").map(Number);
  for (let i = 0; i < Math.max(left.length, right.length); i++) {
    const diff = (left[i] ?? 0) - (right[i] ?? 0);
    if (diff !== 0) return diff;
  }
  return 0;
}

/** The newest `vmlinux-{line}.N` among names (bucket keys or file names); undefined when none. */
export function newestKernel(names: readonly string[], kernelVersion: string): string | undefined {
  const escaped = kernelVersion.replace(/\./g, "\\.");
  // The version is the whole match (the prefix is a lookbehind), so no capture group can be missing.
  const pattern = new RegExp(`(?<=(?:^|/)vmlinux-)${escaped}(?:\\.\\d+)?$`);
  let best: { name: string; version: string } | undefined;
  for (const name of names) {
    const version = pattern.exec(name)?.[0];
    if (version === undefined) continue;
    if (!best || compareVersions(version, best.version) > 0) best = { name, version };
  }
  return best?.name;
}

type Parsed = z.output<typeof setupOptionsSchema>;

function checksumMismatch(what: string, expected: string, actual: string, where: string): OrchestratorError {
  return new OrchestratorError(
    "CHECKSUM_MISMATCH",
    `${what} has sha256 ${actual} but ${where} says ${expected}; the download is corrupt or was replaced (it was deleted; run setup again, or check the mirror)`,
    { details: { what, expected, actual } },
  );
}

/** An installed file counts when it exists, matches its sidecar, and (when given) the expected digest. */
async function installedIntact(path: string, expected?: string): Promise<string | undefined> {
  if (!(await stat(path).catch(() => undefined))?.isFile()) return undefined;
  try {
    const { sha256 } = await verifyChecksum(path, { kind: "sidecar" });
    return expected === undefined || sha256 === expected ? sha256 : undefined;
  } catch {
    return undefined;
  }
}

class SetupRun {
  readonly #options: Parsed;
  readonly #runtime: SetupRuntime;
  readonly #http: HttpOptions;
  readonly #downloadDir: string;
  readonly #logger: Logger;
  readonly #dispatcher: Dispatcher;

  constructor(options: Parsed, runtime: SetupRuntime) {
    this.#options = options;
    this.#runtime = runtime;
    this.#logger = runtime.logger ?? silentLogger;
    this.#dispatcher = createDispatcher(options.proxy);
    this.#http = {
      dispatcher: this.#dispatcher,
      retries: options.retries,
      retryDelayMs: options.retryDelayMs,
      signal: runtime.signal,
      logger: this.#logger,
    };
    this.#downloadDir = options.downloadDir ?? join(options.firecrackerRoot, ".downloads");
  }

  async close(): Promise<void> {
    await this.#dispatcher.close();
  }

  #progress = (progress: DownloadProgress) =>
    this.#runtime.onProgress?.({
      task: progress.name,
      phase: "download",
      bytes: progress.bytes,
      ...(progress.totalBytes === undefined ? {} : { totalBytes: progress.totalBytes }),
    });

  /** The file named `name`: from `--from`, or downloaded (resuming) into the download directory. */
  async #obtain(url: string, name: string): Promise<{ path: string; downloaded: boolean }> {
    if (this.#options.from) {
      const path = join(this.#options.from, name);
      if (!(await stat(path).catch(() => undefined))?.isFile()) {
        throw new OrchestratorError(
          "DOWNLOAD_NOT_FOUND",
          `--from ${this.#options.from} has no ${name}; download ${url} there (with its .sha256.txt for a release tarball)`,
          { details: { from: this.#options.from, name, url } },
        );
      }
      return { path, downloaded: false };
    }
    await mkdir(this.#downloadDir, { recursive: true, mode: 0o700 });
    const path = join(this.#downloadDir, name);
    await withDownloadLock(path, () =>
      downloadResumable(url, path, { ...this.#http, name, onProgress: this.#progress }),
    );
    const { size } = await stat(path);
    this.#runtime.onProgress?.({ task: name, phase: "download", bytes: size, totalBytes: size, done: true });
    return { path, downloaded: true };
  }

  async #text(url: string, name: string): Promise<string> {
    if (this.#options.from) {
      const path = join(this.#options.from, name);
      try {
        return await readFile(path, "utf8");
      } catch (cause) {
        throw new OrchestratorError(
          "DOWNLOAD_NOT_FOUND",
          `--from ${this.#options.from} has no ${name} (the release's published sha256 of its tarball); put it there, or pin the digest`,
          { cause, details: { from: this.#options.from, name, url } },
        );
      }
    }
    return (await fetchSmall(url, MAX_SMALL_BYTES, this.#http)).toString("utf8");
  }

  async firecracker(result: SetupResult): Promise<void> {
    const { arch, firecrackerVersion: version, firecrackerRoot } = this.#options;
    const dir = join(firecrackerRoot, version, arch);
    const targets = { firecracker: join(dir, "firecracker"), jailer: join(dir, "jailer") };
    if (!this.#options.force) {
      const [firecrackerSha, jailerSha] = await Promise.all([
        installedIntact(targets.firecracker),
        installedIntact(targets.jailer),
      ]);
      if (firecrackerSha !== undefined && jailerSha !== undefined) {
        const archOk = await Promise.all(
          Object.values(targets).map(
            async (path) => (await detectBinaryArch(path).catch(() => undefined))?.arch === arch,
          ),
        );
        if (archOk.every(Boolean)) {
          result.firecracker = {
            path: targets.firecracker,
            sha256: firecrackerSha,
            status: "present",
            verification: "sidecar",
          };
          result.jailer = {
            path: targets.jailer,
            sha256: jailerSha,
            status: "present",
            verification: "sidecar",
          };
          return;
        }
      }
    }
    const tarball = releaseTarballName(version, arch);
    const url = `${this.#options.releaseBaseUrl.replace(/\/$/, "")}/${version}/${tarball}`;
    // The small sums file first: a wrong version or arch fails before a large download.
    const pinned = this.#options.pinnedSha256[tarball];
    let expected: string;
    let verification: SetupVerification;
    if (pinned) {
      expected = pinned;
      verification = "pinned";
    } else {
      const sums = await this.#text(`${url}.sha256.txt`, `${tarball}.sha256.txt`);
      try {
        expected = parseSha256Sidecar(sums, tarball);
      } catch (cause) {
        throw new OrchestratorError(
          "ARTIFACT_INVALID",
          `${url}.sha256.txt is not "<sha256>  ${tarball}": ${(cause as Error).message}`,
          { cause, details: { url: `${url}.sha256.txt` } },
        );
      }
      verification = "published";
    }
    const obtained = await this.#obtain(url, tarball);
    const actual = await sha256File(obtained.path);
    if (actual !== expected) {
      if (obtained.downloaded) await rm(obtained.path, { force: true });
      throw checksumMismatch(
        tarball,
        expected,
        actual,
        verification === "pinned" ? "the pinned digest" : `${tarball}.sha256.txt`,
      );
    }
    await mkdir(this.#downloadDir, { recursive: true, mode: 0o700 });
    const work = await mkdtemp(join(this.#downloadDir, "extract-"));
    try {
      await this.#installRelease(obtained.path, work, {
        tarball,
        url,
        actual,
        verification,
        targets,
        result,
      });
    } finally {
      await rm(work, { recursive: true, force: true });
      // Verified or not, a download is not kept: installed files are the cache.
      if (obtained.downloaded) await rm(obtained.path, { force: true });
    }
  }

  async #installRelease(
    archive: string,
    work: string,
    context: {
      tarball: string;
      url: string;
      actual: string;
      verification: SetupVerification;
      targets: Record<"firecracker" | "jailer", string>;
      result: SetupResult;
    },
  ): Promise<void> {
    const { arch, firecrackerVersion: version } = this.#options;
    const { tarball, url, actual, verification, targets, result } = context;
    const members = releaseMembers(version, arch);
    const wanted = new Map([
      [members.firecracker, join(work, "firecracker")],
      [members.jailer, join(work, "jailer")],
    ]);
    const found = await extractTarMembers(archive, wanted, MAX_BINARY_BYTES);
    const missing = [...wanted.keys()].filter((member) => !found.has(member));
    if (missing.length > 0) {
      throw new OrchestratorError(
        "ARTIFACT_INVALID",
        `${tarball} has no ${missing.join(" or ")}; it is not a Firecracker ${version} release for ${archTraits(arch).unameMachine}`,
        { details: { tarball, missing } },
      );
    }
    const staged: { name: "firecracker" | "jailer"; path: string; sha256: string }[] = [];
    for (const name of ["firecracker", "jailer"] as const) {
      const path = join(work, name);
      let detected: Arch;
      try {
        detected = (await detectBinaryArch(path)).arch;
      } catch (cause) {
        throw new OrchestratorError(
          "ARTIFACT_INVALID",
          `${name} in ${tarball}: ${(cause as Error).message}`,
          {
            cause,
            details: { tarball, member: members[name] },
          },
        );
      }
      if (detected !== arch) {
        throw new OrchestratorError(
          "ARCH_MISMATCH",
          `${name} in ${tarball} is a ${detected} binary, but setup installs for ${arch}; the mirror serves the wrong release for this arch (nothing was installed)`,
          { details: { tarball, member: members[name], expected: arch, detected } },
        );
      }
      staged.push({ name, path, sha256: await sha256File(path) });
    }
    // Both verified before either is installed: a failure never leaves a half-updated pair.
    for (const file of staged) {
      await installVerifiedFile(file.path, targets[file.name], file.sha256, 0o755, {
        ...(file.name === "firecracker"
          ? {
              SOURCE: `url=${url}\ntarball-sha256=${actual}\nverification=${verification}\nfetched=${new Date().toISOString()}\n`,
            }
          : {}),
      });
      result[file.name] = {
        path: targets[file.name],
        sha256: file.sha256,
        status: "installed",
        verification,
        source: url,
      };
    }
    this.#logger.info?.({ targets, version, arch }, "firecracker and jailer installed");
  }

  async #kernelSource(): Promise<{ url: string; name: string }> {
    const { kernelUrl, from, kernelVersion, arch, kernelBucketUrl, firecrackerVersion } = this.#options;
    if (kernelUrl) return { url: kernelUrl, name: basename(new URL(kernelUrl).pathname) };
    const prefix = `firecracker-ci/${ciVersionOf(firecrackerVersion)}/${archTraits(arch).unameMachine}/`;
    const bucket = kernelBucketUrl.replace(/\/$/, "");
    if (from) {
      const names = await readdir(from).catch(() => [] as string[]);
      const name = newestKernel(names, kernelVersion);
      if (!name) {
        throw new OrchestratorError(
          "DOWNLOAD_NOT_FOUND",
          `--from ${from} has no vmlinux-${kernelVersion}.N kernel; download one from ${bucket}/${prefix} there, or pass --kernel-url`,
          { details: { from, kernelVersion } },
        );
      }
      return { url: `${bucket}/${prefix}${name}`, name };
    }
    const listingUrl = `${bucket}/?list-type=2&prefix=${encodeURIComponent(`${prefix}vmlinux-${kernelVersion}`)}`;
    const listing = (await fetchSmall(listingUrl, MAX_SMALL_BYTES * 4, this.#http)).toString("utf8");
    const keys = [...listing.matchAll(/(?<=<Key>)[^<]{1,1024}(?=<\/Key>)/g)].map((match) => match[0]);
    const key = newestKernel(keys, kernelVersion);
    if (!key) {
      throw new OrchestratorError(
        "DOWNLOAD_NOT_FOUND",
        `${bucket} lists no ${prefix}vmlinux-${kernelVersion}.N; pick another --kernel-version, or pass --kernel-url`,
        { details: { listingUrl, keys: keys.slice(0, 20) } },
      );
    }
    return { url: `${bucket}/${key}`, name: basename(key) };
  }

  async kernel(result: SetupResult): Promise<void> {
    const { arch, kernelRoot, kernelVersion } = this.#options;
    const kernelName = this.#options.kernelName ?? ARCH_DEFAULTS[arch].kernelName;
    const target = join(kernelRoot, kernelVersion, arch, kernelName);
    const pinnedUpFront = this.#options.kernelSha256;
    if (!this.#options.force) {
      const sha256 = await installedIntact(target, pinnedUpFront);
      if (
        sha256 &&
        (await checkKernelImage(target, arch).then(
          () => true,
          () => false,
        ))
      ) {
        result.kernel = {
          path: target,
          sha256,
          status: "present",
          verification: pinnedUpFront ? "pinned" : "sidecar",
        };
        return;
      }
    }
    const source = await this.#kernelSource();
    const expected = pinnedUpFront ?? this.#options.pinnedSha256[source.name];
    const obtained = await this.#obtain(source.url, source.name);
    const actual = await sha256File(obtained.path);
    if (expected !== undefined && actual !== expected) {
      if (obtained.downloaded) await rm(obtained.path, { force: true });
      throw checksumMismatch(source.name, expected, actual, "the pinned digest");
    }
    if (expected === undefined) {
      this.#logger.warn?.(
        { url: source.url, sha256: actual },
        "the kernel has no published checksum and none was pinned (--kernel-sha256): installed with the digest it had",
      );
    }
    try {
      await checkKernelImage(obtained.path, arch);
    } catch (cause) {
      if (obtained.downloaded) await rm(obtained.path, { force: true });
      const detected = (cause as ArchError).details?.detected as { arch?: Arch } | undefined;
      const wrongArch = cause instanceof ArchError && detected?.arch !== undefined && detected.arch !== arch;
      throw new OrchestratorError(
        wrongArch ? "ARCH_MISMATCH" : "ARTIFACT_INVALID",
        `${source.url}: ${(cause as Error).message} (nothing was installed)`,
        { cause, details: { url: source.url, arch } },
      );
    }
    await installVerifiedFile(obtained.path, target, actual, 0o644, {
      [`${kernelName}.SOURCE`]: `url=${source.url}\nsha256=${actual}\nverification=${expected ? "pinned" : "unpinned"}\nfetched=${new Date().toISOString()}\n`,
    });
    if (obtained.downloaded) await rm(obtained.path, { force: true });
    result.kernel = {
      path: target,
      sha256: actual,
      status: "installed",
      verification: expected ? "pinned" : "unpinned",
      source: source.url,
    };
  }
}

/**
 * Fetches the Firecracker release (firecracker + jailer) and a guest kernel for one arch, verifies
 * them (sha256 against the release's published sums or pinned digests, ELF/kernel arch), and installs
 * them as `{firecrackerRoot}/{version}/{arch}/{firecracker,jailer}` and
 * `{kernelRoot}/{kernelVersion}/{arch}/{vmlinux|Image}`, each with a `.sha256` sidecar. Files that
 * are installed and intact are left alone; interrupted downloads resume; nothing half-written or
 * unverified is ever put at an artifact path.
 */
export async function setupArtifacts(input: SetupOptions, runtime: SetupRuntime = {}): Promise<SetupResult> {
  const parsed = setupOptionsSchema.safeParse(input);
  if (!parsed.success) {
    throw new OrchestratorError("INVALID_OPTIONS", `setup: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
    });
  }
  const options = parsed.data;
  const result: SetupResult = {
    arch: options.arch,
    firecrackerVersion: options.firecrackerVersion,
    kernelVersion: options.kernelVersion,
  };
  const run = new SetupRun(options, runtime);
  try {
    if (options.firecracker) await run.firecracker(result);
    if (options.kernel) await run.kernel(result);
  } finally {
    await run.close();
  }
  return result;
}

/**
 * The one `sbx setup` command line that would fetch what `config` lacks (Firecracker and jailer
 * unless FIRECRACKER_BIN is set, the kernel unless `kernel: false`), or undefined when nothing is
 * missing. Directories and versions appear only where they differ from the defaults.
 */
export async function setupCommandFor(
  config: OrchestratorConfig,
  options: { kernel?: boolean; command?: string } = {},
): Promise<string | undefined> {
  const lacks = async (resolve: () => Promise<unknown>) =>
    resolve().then(
      () => false,
      () => true,
    );
  const needFirecracker = !config.firecrackerBin && (await lacks(() => resolveFirecrackerBinary(config)));
  const needKernel = options.kernel !== false && (await lacks(() => resolveKernel(config)));
  if (!needFirecracker && !needKernel) return undefined;
  const args = [options.command ?? "sbx setup", "--arch", config.targetArch];
  if (config.firecrackerVersion !== CONFIG_DEFAULTS.firecrackerVersion)
    args.push("--firecracker-version", config.firecrackerVersion);
  if (config.firecrackerRoot !== CONFIG_DEFAULTS.firecrackerRoot)
    args.push("--firecracker-dir", config.firecrackerRoot);
  if (needKernel) {
    if (config.kernelVersion !== CONFIG_DEFAULTS.kernelVersion)
      args.push("--kernel-version", config.kernelVersion);
    if (config.kernelRoot !== CONFIG_DEFAULTS.kernelRoot) args.push("--kernel-dir", config.kernelRoot);
  }
  if (!needFirecracker) args.push("--no-firecracker");
  if (!needKernel) args.push("--no-kernel");
  return args.join(" ");
}
