import { copyFile, mkdir, mkdtemp, open, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Arch, archSchema, detectBinaryArch, type Logger, sha256File, silentLogger } from "@sbx/arch";
import { z } from "zod";
import { DEFAULT_BUSYBOX_VERSION } from "./busybox.ts";
import { readElfLinkage } from "./elf.ts";
import { RootfsError } from "./errors.ts";
import { runCommand } from "./exec.ts";

export const fetchBusyboxOptionsSchema = z.object({
  dir: z.string().min(1),
  arch: archSchema,
  /** The directory label `{dir}/{version}/`; Debian's package version is recorded in `SOURCE`. */
  version: z
    .string()
    .min(1)
    .refine((v) => !v.includes("/") && v !== "." && v !== "..", "must be one path segment")
    .default(DEFAULT_BUSYBOX_VERSION),
  /** Use this busybox-static .deb instead of running `apt-get download` (offline setups, tests). */
  deb: z.string().min(1).optional(),
  /** Fail when Debian's upstream version differs from `version` instead of warning. */
  requireVersionMatch: z.boolean().default(false),
  /** Allow `dpkg --add-architecture <arch>` + `apt-get update` for a foreign arch. Default true. */
  enableForeignArch: z.boolean().default(true),
});
/** What `fetchBusybox` downloads: Debian's static busybox for an arch, into the busybox directory layout. */
export type FetchBusyboxOptions = z.input<typeof fetchBusyboxOptionsSchema>;

/** The busybox `fetchBusybox` installed: path, sha256 and Debian package version. */
export interface FetchBusyboxResult {
  path: string;
  sha256: string;
  /** Debian's package version, e.g. `1:1.35.0-4+deb12u1+b1`. */
  debianVersion: string;
  /** The upstream part of it, e.g. `1.35.0`. */
  upstreamVersion: string;
  versionMatches: boolean;
}

/** `1:1.35.0-4+deb12u1+b1` → `1.35.0` (epoch and Debian revision dropped). */
export function debianUpstreamVersion(debianVersion: string): string {
  return debianVersion.replace(/^\d+:/, "").replace(/-[^-]*$/, "");
}

/**
 * Populates `{dir}/{version}/{arch}/busybox` from Debian's `busybox-static:<arch>`: downloads the
 * .deb with `apt-get download` (for a foreign arch, enabling it with `dpkg --add-architecture` and
 * `apt-get update` first, only when it is not enabled yet), extracts it with `dpkg-deb -x`, checks
 * the ELF machine and static linking, then writes binary, `busybox.sha256` and `SOURCE` under temp
 * names and renames them into place.
 */
export async function fetchBusybox(
  input: FetchBusyboxOptions,
  logger: Logger = silentLogger,
): Promise<FetchBusyboxResult> {
  const parsed = fetchBusyboxOptionsSchema.safeParse(input);
  if (!parsed.success) {
    throw new RootfsError("INVALID_OPTIONS", `fetchBusybox: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
    });
  }
  const options = parsed.data;
  const work = await mkdtemp(join(tmpdir(), "sbx-fetch-busybox-"));
  try {
    const deb = options.deb ?? (await aptDownload(options.arch, work, options.enableForeignArch, logger));
    const debianVersion = (await runCommand(["dpkg-deb", "-f", deb, "Version"])).stdout.trim();
    const packageArch = (await runCommand(["dpkg-deb", "-f", deb, "Architecture"])).stdout.trim();
    if (packageArch !== options.arch) {
      throw new RootfsError(
        "BUSYBOX_ARCH_MISMATCH",
        `${deb} is a package for ${packageArch}, not ${options.arch}`,
        { details: { deb, packageArch } },
      );
    }
    const extracted = join(work, "extract");
    await runCommand(["dpkg-deb", "-x", deb, extracted]);
    const binary = await findBusybox(extracted, deb);
    const detected = await detectBinaryArch(binary);
    if (detected.arch !== options.arch) {
      throw new RootfsError(
        "BUSYBOX_ARCH_MISMATCH",
        `busybox in ${deb} is a ${detected.arch} binary, not ${options.arch}`,
        { details: { deb, detected } },
      );
    }
    const linkage = await readElfLinkage(binary);
    if (!linkage.static) {
      throw new RootfsError(
        "BUSYBOX_NOT_STATIC",
        `busybox in ${deb} is dynamically linked; use busybox-static`,
        {
          details: { deb, ...linkage },
        },
      );
    }
    const upstreamVersion = debianUpstreamVersion(debianVersion);
    const versionMatches = upstreamVersion === options.version;
    if (!versionMatches) {
      const message = `Debian's busybox-static:${options.arch} is ${upstreamVersion} (${debianVersion}), installed under the ${options.version} label`;
      if (options.requireVersionMatch) {
        throw new RootfsError(
          "BUSYBOX_FETCH_FAILED",
          `${message}; pass a matching --version or drop --require-version-match`,
          {
            details: { debianVersion, requested: options.version },
          },
        );
      }
      logger.warn?.({ debianVersion, requested: options.version }, message);
    }
    const sha256 = await sha256File(binary);
    const target = join(options.dir, options.version, options.arch);
    await mkdir(target, { recursive: true });
    const suffix = `.tmp-${process.pid}-${Date.now()}`;
    const staged = {
      binary: join(target, `.busybox${suffix}`),
      sidecar: join(target, `.busybox.sha256${suffix}`),
      source: join(target, `.SOURCE${suffix}`),
    };
    try {
      await copyFile(binary, staged.binary);
      await fsyncPath(staged.binary, 0o755);
      await writeDurable(staged.sidecar, `${sha256}  busybox\n`);
      await writeDurable(
        staged.source,
        `${[
          "package=busybox-static",
          `debian-version=${debianVersion}`,
          `upstream-version=${upstreamVersion}`,
          `requested-version=${options.version}`,
          `arch=${options.arch}`,
          `sha256=${sha256}`,
          `static-pie=${linkage.staticPie}`,
          `fetched=${new Date().toISOString()}`,
        ].join("\n")}\n`,
      );
      // Binary first: until the sidecar follows, resolveBusybox sees a mismatch and refuses.
      await rename(staged.binary, join(target, "busybox"));
      await rename(staged.sidecar, join(target, "busybox.sha256"));
      await rename(staged.source, join(target, "SOURCE"));
      await fsyncPath(target);
    } finally {
      await Promise.all(Object.values(staged).map((p) => rm(p, { force: true })));
    }
    logger.info?.({ path: join(target, "busybox"), sha256, debianVersion }, "busybox installed");
    return { path: join(target, "busybox"), sha256, debianVersion, upstreamVersion, versionMatches };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

async function aptDownload(
  arch: Arch,
  work: string,
  enableForeignArch: boolean,
  logger: Logger,
): Promise<string> {
  const native = (await runCommand(["dpkg", "--print-architecture"])).stdout.trim();
  if (arch !== native) {
    const foreign = (await runCommand(["dpkg", "--print-foreign-architectures"])).stdout.split(/\s+/);
    if (!foreign.includes(arch)) {
      if (!enableForeignArch) {
        throw new RootfsError(
          "BUSYBOX_FETCH_FAILED",
          `${arch} is not a dpkg architecture on this ${native} host; run dpkg --add-architecture ${arch} && apt-get update, or allow the fetcher to do it`,
          { details: { arch, native } },
        );
      }
      logger.info?.({ arch }, `enabling dpkg architecture ${arch} and updating apt lists`);
      await runCommand(["dpkg", "--add-architecture", arch]);
      await runCommand(["apt-get", "update"], { timeoutMs: 600_000 });
    }
  }
  const args = ["-o", "APT::Sandbox::User=root", "download", `busybox-static:${arch}`];
  let result = await runCommand(["apt-get", ...args], { check: false, cwd: work, timeoutMs: 300_000 });
  if (
    result.code !== 0 &&
    /Unable to locate|Can't select candidate|has no installation candidate/.test(result.stderr)
  ) {
    logger.info?.({ arch }, "busybox-static not in the apt lists; running apt-get update once");
    await runCommand(["apt-get", "update"], { timeoutMs: 600_000 });
    result = await runCommand(["apt-get", ...args], { check: false, cwd: work, timeoutMs: 300_000 });
  }
  if (result.code !== 0) {
    throw new RootfsError(
      "BUSYBOX_FETCH_FAILED",
      `apt-get download busybox-static:${arch} failed: ${result.stderr.trim()}`,
      { details: { arch, stderr: result.stderr } },
    );
  }
  const deb = (await readdir(work)).find(
    (name) => name.startsWith("busybox-static_") && name.endsWith(".deb"),
  );
  if (!deb) {
    throw new RootfsError(
      "BUSYBOX_FETCH_FAILED",
      `apt-get download busybox-static:${arch} produced no .deb`,
      {
        details: { arch },
      },
    );
  }
  return join(work, deb);
}

async function findBusybox(extracted: string, deb: string): Promise<string> {
  for (const candidate of ["bin/busybox", "usr/bin/busybox"]) {
    const path = join(extracted, candidate);
    try {
      if ((await stat(path)).isFile()) return path;
    } catch {
      // try the next location
    }
  }
  throw new RootfsError("BUSYBOX_FETCH_FAILED", `${deb} contains no bin/busybox or usr/bin/busybox`, {
    details: { deb },
  });
}

async function writeDurable(path: string, text: string): Promise<void> {
  await writeFile(path, text, { mode: 0o644 });
  await fsyncPath(path);
}

async function fsyncPath(path: string, mode?: number): Promise<void> {
  const handle = await open(path, "r");
  try {
    if (mode !== undefined) await handle.chmod(mode);
    await handle.sync();
  } finally {
    await handle.close();
  }
}
