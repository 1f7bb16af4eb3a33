import { type Arch, ArchError, archSchema, resolveArtifact } from "@sbx/arch";
import { z } from "zod";
import { readElfLinkage } from "./elf.ts";
import { RootfsError, type RootfsErrorCode } from "./errors.ts";

/** The busybox version used everywhere unless a caller (or BUSYBOX_VERSION) says otherwise. */
export const DEFAULT_BUSYBOX_VERSION = "1.36.1";

export const resolveBusyboxOptionsSchema = z.object({
  /** HOST_BUSYBOX_DIR: busybox lives at `{dir}/{version}/{arch}/busybox`. */
  dir: z.string().min(1),
  version: z.string().min(1).default(DEFAULT_BUSYBOX_VERSION),
  arch: archSchema,
  /** Accept a busybox without a `busybox.sha256` sidecar. A sidecar that exists is always checked. */
  allowUnverified: z.boolean().default(false),
});
/** Where `resolveBusybox` looks (`{dir}/{version}/{arch}/busybox`) and how it verifies the binary. */
export type ResolveBusyboxOptions = z.input<typeof resolveBusyboxOptionsSchema>;

/** A busybox that passed every check: path, version, arch and sha256. */
export interface ResolvedBusybox {
  path: string;
  version: string;
  arch: Arch;
  sha256: string;
  /** False only when the sidecar was missing and `allowUnverified` was passed. */
  checksumVerified: boolean;
  /** True for a static-PIE build (PT_DYNAMIC without interpreter or needed libraries). */
  staticPie: boolean;
}

const archErrorCodes: Partial<Record<string, RootfsErrorCode>> = {
  ARTIFACT_NOT_FOUND: "BUSYBOX_NOT_FOUND",
  ARTIFACT_UNREADABLE: "BUSYBOX_NOT_FOUND",
  ARTIFACT_CHECKSUM_MISSING: "BUSYBOX_CHECKSUM_MISSING",
  ARTIFACT_CHECKSUM_MISMATCH: "BUSYBOX_CHECKSUM_MISMATCH",
  ARTIFACT_ARCH_MISMATCH: "BUSYBOX_ARCH_MISMATCH",
  UNSUPPORTED_BINARY_ARCH: "BUSYBOX_ARCH_MISMATCH",
  UNKNOWN_BINARY_FORMAT: "BUSYBOX_ARCH_MISMATCH",
  INVALID_OPTIONS: "INVALID_OPTIONS",
};

/**
 * Finds busybox for `arch` under `dir` through @sbx/arch artifact resolution and checks it every
 * time it is called: the sha256 against `busybox.sha256` (bare hex or `sha256sum` format), the ELF
 * machine against `arch`, and that it is statically linked (it runs before any library exists in
 * the guest, and in images without a compatible libc).
 */
export async function resolveBusybox(input: ResolveBusyboxOptions): Promise<ResolvedBusybox> {
  const parsed = resolveBusyboxOptionsSchema.safeParse(input);
  if (!parsed.success) {
    throw new RootfsError("INVALID_OPTIONS", `resolveBusybox: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
    });
  }
  const options = parsed.data;
  let artifact: Awaited<ReturnType<typeof resolveArtifact>>;
  try {
    artifact = await resolveArtifact({
      root: options.dir,
      version: options.version,
      name: "busybox",
      arch: options.arch,
      verifyArch: true,
      checksum: { kind: "sidecar", allowUnverified: options.allowUnverified },
    });
  } catch (cause) {
    if (cause instanceof ArchError) {
      const code = archErrorCodes[cause.code] ?? "BUSYBOX_NOT_FOUND";
      const hint =
        code === "BUSYBOX_NOT_FOUND"
          ? `\npopulate it with: sbx-fetch-busybox --arch ${options.arch} --version ${options.version} --dir ${options.dir}`
          : "";
      throw new RootfsError(code, `busybox: ${cause.message}${hint}`, {
        cause,
        details: { ...cause.details },
      });
    }
    throw cause;
  }
  const linkage = await readElfLinkage(artifact.path);
  if (!linkage.static) {
    throw new RootfsError(
      "BUSYBOX_NOT_STATIC",
      `${artifact.path} is dynamically linked (${
        linkage.interpreter
          ? `interpreter ${linkage.interpreter}`
          : `${linkage.neededLibraries} needed libraries`
      }); the guest runs it before any library is available. Use a static build (Debian busybox-static)`,
      { details: { path: artifact.path, ...linkage } },
    );
  }
  return {
    path: artifact.path,
    version: options.version,
    arch: options.arch,
    sha256: artifact.sha256 ?? "",
    checksumVerified: artifact.checksumVerified ?? false,
    staticPie: linkage.staticPie,
  };
}

/**
 * Busybox location from the environment: HOST_BUSYBOX_DIR (required) and BUSYBOX_VERSION (default
 * DEFAULT_BUSYBOX_VERSION). The only place this package reads busybox settings from `env`.
 */
export function busyboxOptionsFromEnv(env: Readonly<Record<string, string | undefined>> = process.env): {
  dir: string;
  version: string;
} {
  const dir = env.HOST_BUSYBOX_DIR?.trim();
  if (!dir) {
    throw new RootfsError(
      "INVALID_OPTIONS",
      "HOST_BUSYBOX_DIR is not set; point it at the directory holding {version}/{arch}/busybox (populate it with sbx-fetch-busybox)",
    );
  }
  const version = env.BUSYBOX_VERSION?.trim() || DEFAULT_BUSYBOX_VERSION;
  return { dir, version };
}
