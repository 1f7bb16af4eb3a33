import type { Arch } from "./arch.ts";
import { ArchError } from "./errors.ts";
import type { Logger } from "./logger.ts";

export interface OciPlatform {
  os: "linux";
  architecture: Arch;
  variant?: string;
}

export type KernelImageFormat = "elf" | "arm64-image";

export interface FirecrackerArgsOptions {
  /** The VM will be restored from a snapshot with a userfaultfd memory backend. */
  uffdRestore: boolean;
  /** Accept running Firecracker with `--no-seccomp` where the arch needs it (a security downgrade). */
  allowNoSeccomp?: boolean;
  /** A compiled seccomp filter (Firecracker's `--seccomp-filter`) that allows what the arch needs. */
  seccompFilter?: string;
  logger?: Logger;
}

export interface ArchTraits {
  arch: Arch;
  /** What `uname -m` prints. */
  unameMachine: "x86_64" | "aarch64";
  goArch: Arch;
  ociPlatform: OciPlatform;
  /** ELF `e_machine`: EM_X86_64 (62) or EM_AARCH64 (183). */
  elfMachine: 62 | 183;
  /** Firecracker rejects `smt: true` on aarch64. */
  smtSupported: boolean;
  /** The kernel format Firecracker boots: an uncompressed ELF vmlinux on x86_64, a PE `Image` on aarch64. */
  kernelImageFormat: KernelImageFormat;
  /** The arch-specific Firecracker command-line arguments. */
  firecrackerArgs(options: FirecrackerArgsOptions): string[];
}

function amd64FirecrackerArgs(options: FirecrackerArgsOptions): string[] {
  return options.seccompFilter ? ["--seccomp-filter", options.seccompFilter] : [];
}

// Firecracker's default aarch64 seccomp filter lacks the syscalls a UFFD-backed restore needs, so on
// arm64 a UFFD restore must either use a caller's filter that allows them or run without seccomp.
function arm64FirecrackerArgs(options: FirecrackerArgsOptions): string[] {
  if (options.seccompFilter) return ["--seccomp-filter", options.seccompFilter];
  if (!options.uffdRestore) return [];
  if (options.allowNoSeccomp) {
    options.logger?.warn?.(
      { arch: "arm64", flag: "--no-seccomp" },
      "running Firecracker without seccomp for a UFFD restore on arm64: its default aarch64 filter lacks the userfaultfd syscalls; pass a compiled filter (seccompFilter) to keep seccomp on",
    );
    return ["--no-seccomp"];
  }
  throw new ArchError(
    "SECCOMP_CHOICE_REQUIRED",
    "a UFFD snapshot restore on arm64 needs a seccomp decision: Firecracker's default aarch64 filter lacks the userfaultfd syscalls. Pass seccompFilter (a compiled filter that allows them; recommended) or allowNoSeccomp: true (turns seccomp off, which Firecracker advises against in production)",
    { details: { arch: "arm64" } },
  );
}

const TRAITS: Readonly<Record<Arch, ArchTraits>> = {
  amd64: Object.freeze({
    arch: "amd64",
    unameMachine: "x86_64",
    goArch: "amd64",
    ociPlatform: Object.freeze({ os: "linux", architecture: "amd64" }),
    elfMachine: 62,
    smtSupported: true,
    kernelImageFormat: "elf",
    firecrackerArgs: amd64FirecrackerArgs,
  }),
  arm64: Object.freeze({
    arch: "arm64",
    unameMachine: "aarch64",
    goArch: "arm64",
    ociPlatform: Object.freeze({ os: "linux", architecture: "arm64", variant: "v8" }),
    elfMachine: 183,
    smtSupported: false,
    kernelImageFormat: "arm64-image",
    firecrackerArgs: arm64FirecrackerArgs,
  }),
};

export function archTraits(arch: Arch): ArchTraits {
  return TRAITS[arch];
}
