import { type Arch, SUPPORTED_ARCHES } from "./arch.ts";
import { ArchError } from "./errors.ts";
import type { Logger } from "./logger.ts";

// Firecracker's static CPU templates (deprecated upstream since v1.5 in favour of custom templates), by the
// arch whose Firecracker accepts them: the one list; fc-client's schema, its arch refusals and
// cpu-template's catalog derive from it.
const STATIC_CPU_TEMPLATES = Object.freeze({
  amd64: Object.freeze(["C3", "T2", "T2S", "T2CL", "T2A"] as const),
  arm64: Object.freeze(["V1N1"] as const),
});

/** A static CPU template name as Firecracker's API spells it (`machine-config.cpu_template`). */
export type StaticCpuTemplateName = (typeof STATIC_CPU_TEMPLATES)[Arch][number];

/** The OCI platform an arch's images are published for. */
export interface OciPlatform {
  os: "linux";
  architecture: Arch;
  variant?: string;
}

/** The kernel image format Firecracker boots on an arch. */
export type KernelImageFormat = "elf" | "arm64-image";

/** What decides the arch-specific Firecracker command-line arguments. */
export interface FirecrackerArgsOptions {
  /** The VM will be restored from a snapshot with a userfaultfd memory backend. */
  uffdRestore: boolean;
  /** Accept running Firecracker with `--no-seccomp` where the arch needs it (a security downgrade). */
  allowNoSeccomp?: boolean | undefined;
  /** A compiled seccomp filter (Firecracker's `--seccomp-filter`) that allows what the arch needs. */
  seccompFilter?: string | undefined;
  logger?: Logger;
}

/** Everything that differs between the target arches, in one record per arch. */
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
  /** The static CPU templates Firecracker accepts on this arch (it refuses the others' at configure time). */
  staticCpuTemplates: readonly StaticCpuTemplateName[];
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
    staticCpuTemplates: STATIC_CPU_TEMPLATES.amd64,
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
    staticCpuTemplates: STATIC_CPU_TEMPLATES.arm64,
    firecrackerArgs: arm64FirecrackerArgs,
  }),
};

/** The traits of `arch`: uname machine, OCI platform, ELF machine, SMT, kernel format, static CPU templates, Firecracker flags. */
export function archTraits(arch: Arch): ArchTraits {
  return TRAITS[arch];
}

/** Every static CPU template name, of every arch. */
export const STATIC_CPU_TEMPLATE_NAMES: readonly StaticCpuTemplateName[] = Object.freeze(
  SUPPORTED_ARCHES.flatMap((arch) => TRAITS[arch].staticCpuTemplates),
);

/** Whether `value` is a static CPU template name, exactly as Firecracker spells it. */
export function isStaticCpuTemplateName(value: unknown): value is StaticCpuTemplateName {
  return typeof value === "string" && (STATIC_CPU_TEMPLATE_NAMES as readonly string[]).includes(value);
}

const STATIC_CPU_TEMPLATE_ARCH = Object.freeze(
  Object.fromEntries(
    SUPPORTED_ARCHES.flatMap((arch) => TRAITS[arch].staticCpuTemplates.map((name) => [name, arch])),
  ) as Record<StaticCpuTemplateName, Arch>,
);

/** The arch whose Firecracker accepts the static CPU template `name`. */
export function staticCpuTemplateArch(name: StaticCpuTemplateName): Arch {
  return STATIC_CPU_TEMPLATE_ARCH[name];
}
