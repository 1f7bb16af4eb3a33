import { release } from "node:os";
import type { Arch } from "./arch.ts";
import { ArchError } from "./errors.ts";

/** A parsed `uname -r`: major, minor, patch and the raw string. */
export interface KernelRelease {
  major: number;
  minor: number;
  patch: number;
  /** The string it was parsed from. */
  raw: string;
}

const RELEASE_PATTERN = /^(\d+)\.(\d+)(?:\.(\d+))?(?:[-+_.~]\S*)?$/;

/** Parses `uname -r` output such as `6.1.0-47-cloud-amd64` or `5.10.223-212.873.amzn2.x86_64`. */
export function parseKernelRelease(value: string): KernelRelease {
  const raw = value.trim();
  const match = RELEASE_PATTERN.exec(raw);
  if (!match) {
    throw new ArchError(
      "INVALID_KERNEL_RELEASE",
      `"${value}" is not a kernel release; expected MAJOR.MINOR[.PATCH][-suffix] as printed by uname -r`,
      { details: { value } },
    );
  }
  return { major: Number(match[1]), minor: Number(match[2]), patch: Number(match[3] ?? 0), raw };
}

/** This host's kernel release (`uname -r`), parsed. */
export function hostKernelRelease(): KernelRelease {
  return parseKernelRelease(release());
}

/** Negative, zero or positive as `a` is older than, equal to or newer than `major.minor`. */
export function compareKernelRelease(a: KernelRelease, major: number, minor: number): number {
  return a.major !== major ? a.major - major : a.minor - minor;
}

/** What backs guest memory, which decides the kernel UFFD write-protect needs. */
export type GuestMemoryBacking = "anonymous" | "shmem" | "hugetlb";

/** Whether UFFD write-protect works for a given arch, kernel and memory backing, and why. */
export interface WriteProtectSupport {
  supported: boolean;
  /** Why, in words a log line or `sbx doctor` can print. */
  reason: string;
}

/**
 * Whether userfaultfd write-protect (`UFFDIO_COPY_MODE_WP`, WP faults) works for guest memory with
 * this backing. arm64 gained uffd-wp only in 6.10; shmem/memfd and hugetlb gained it in 5.19, and
 * there it also needs the feature negotiated by whoever created the fd.
 */
export function uffdWriteProtectSupported(options: {
  arch: Arch;
  release: string | KernelRelease;
  backing: GuestMemoryBacking;
}): WriteProtectSupport {
  const kernel = typeof options.release === "string" ? parseKernelRelease(options.release) : options.release;
  const [archMajor, archMinor] = options.arch === "arm64" ? [6, 10] : [5, 7];
  if (compareKernelRelease(kernel, archMajor, archMinor) < 0) {
    return {
      supported: false,
      reason: `${options.arch} kernels before ${archMajor}.${archMinor} have no userfaultfd write-protect (this host runs ${kernel.raw})`,
    };
  }
  if (options.backing !== "anonymous" && compareKernelRelease(kernel, 5, 19) < 0) {
    return {
      supported: false,
      reason: `write-protect for ${options.backing} memory needs kernel 5.19 or newer (this host runs ${kernel.raw})`,
    };
  }
  const negotiated =
    options.backing === "anonymous"
      ? ""
      : "; the fd's creator must also have negotiated UFFD_FEATURE_WP_HUGETLBFS_SHMEM";
  return {
    supported: true,
    reason: `${options.arch} kernel ${kernel.raw} supports write-protect for ${options.backing} memory${negotiated}`,
  };
}
