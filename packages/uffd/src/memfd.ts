// memfd: guest memory that outlives Firecracker. A fork that backs guest memory with a memfd sends it
// next to the userfaultfd; keeping it lets a paused sandbox's memory be exported after Firecracker has
// exited, without reading another process's memory (process_vm_readv).
import { closeSync, constants, fstatSync, openSync } from "node:fs";
import { hostArch } from "@sbx/arch";
import { load } from "ffi-rs";
import { check, UffdError } from "./errors.ts";
import { fdKind } from "./handshake.ts";
import { helperCall, helperLibrary, readyNativeHelper } from "./helper-binding.ts";
import { libc } from "./libc.ts";
import {
  EINVAL,
  ENOSYS,
  EOPNOTSUPP,
  EXDEV,
  F_ADD_SEALS,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  F_SEAL_WRITE,
  MAP_SHARED,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  MFD_HUGETLB,
  PROT_READ,
  SYSCALLS,
} from "./linux.ts";
import { NativeMemory } from "./native-memory.ts";

const SEALS = { seal: F_SEAL_SEAL, shrink: F_SEAL_SHRINK, grow: F_SEAL_GROW, write: F_SEAL_WRITE } as const;
/** A memfd seal by name. */
export type MemfdSeal = keyof typeof SEALS;

/** An owned memfd: `await using memfd = createMemfd("guest", size)`. */
export class Memfd implements AsyncDisposable {
  readonly fd: number;
  readonly size: number;
  #closed = false;

  private constructor(fd: number, size: number) {
    this.fd = fd;
    this.size = size;
  }

  /** Takes ownership of an fd that must be a memfd (checked). */
  static fromFd(fd: number): Memfd {
    if (fdKind(fd) !== "memfd") throw new UffdError("INVALID_OPTIONS", `fd ${fd} is not a memfd`);
    return new Memfd(fd, fstatSync(fd).size);
  }

  static create(name: string, size: number, options: { hugetlb?: boolean; seals?: MemfdSeal[] } = {}): Memfd {
    if (!/^[\w.-]{1,200}$/.test(name))
      throw new UffdError("INVALID_OPTIONS", `memfd name ${JSON.stringify(name)}`);
    const nameMemory = new NativeMemory(4096);
    let fd: number;
    try {
      nameMemory.bytes.write(`${name}\0`);
      const flags = MFD_CLOEXEC | MFD_ALLOW_SEALING | (options.hugetlb ? MFD_HUGETLB : 0);
      fd = check(
        "memfd_create",
        libc.syscall3(SYSCALLS[hostArch()].memfd_create, nameMemory.address, flags, 0),
      );
    } finally {
      nameMemory.free();
    }
    try {
      check("ftruncate", libc.ftruncate(fd, size));
      const seals = (options.seals ?? []).reduce((all, seal) => all | SEALS[seal], 0);
      if (seals) check("fcntl(F_ADD_SEALS)", libc.fcntl(fd, F_ADD_SEALS, seals));
    } catch (error) {
      libc.close(fd);
      throw error;
    }
    return new Memfd(fd, size);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    libc.close(this.fd);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }
}

/** Creates a memfd of `size` bytes (hugetlb if asked), sealed as asked. */
export function createMemfd(
  name: string,
  size: number,
  options: { hugetlb?: boolean; seals?: MemfdSeal[] } = {},
) {
  return Memfd.create(name, size, options);
}

/** A byte range of a memory file. */
export interface ByteRange {
  offset: number;
  length: number;
}

/** What exportRanges wrote, and how. */
export interface ExportResult {
  bytes: number;
  /** `copy_file_range` where the kernel does it for this pair of files, else `pwrite` from the mapping. */
  method: "copy_file_range" | "pwrite-native" | "pwrite";
}

const CHUNK = 8 * 1024 * 1024;

/**
 * Writes `ranges` of `memfd` into `destination` at the same offsets (a sparse file: the rest stays
 * holes). Tries copy_file_range first, which fails with EXDEV from a memfd into ext4 on current kernels,
 * and falls back to pwrite from a shared read-only mapping, in bounded chunks, looping on short writes.
 * Never punches holes in the memfd.
 */
export function exportRanges(
  memfd: Memfd,
  ranges: readonly ByteRange[],
  destination: string,
  options: { nativeHelper?: string } = {},
): ExportResult {
  for (const r of ranges)
    if (r.offset < 0 || r.length < 0 || r.offset + r.length > memfd.size)
      throw new UffdError(
        "INVALID_OPTIONS",
        `range ${r.offset}+${r.length} is past the memfd's ${memfd.size} bytes`,
      );
  const fd = openSync(destination, constants.O_RDWR | constants.O_CREAT, 0o600);
  try {
    if (fstatSync(fd).size < memfd.size) check("ftruncate", libc.ftruncate(fd, memfd.size));
    // Split only what one pwrite cannot take; the common case (pages, huge pages) is used as given.
    const chunks: readonly ByteRange[] = !ranges.some((r) => r.length > CHUNK)
      ? ranges
      : ranges.flatMap((r) => {
          const parts: ByteRange[] = [];
          for (let at = 0; at < r.length; at += CHUNK)
            parts.push({ offset: r.offset + at, length: Math.min(CHUNK, r.length - at) });
          return parts;
        });
    if (chunks.length === 0) return { bytes: 0, method: "pwrite" };
    const viaCopy = tryCopyFileRange(memfd.fd, fd, chunks);
    if (viaCopy !== undefined) return { bytes: viaCopy, method: "copy_file_range" };
    return pwriteFromMapping(memfd, fd, chunks, options.nativeHelper ?? "auto");
  } finally {
    closeSync(fd);
  }
}

function tryCopyFileRange(input: number, output: number, chunks: readonly ByteRange[]): number | undefined {
  const offsets = new NativeMemory(16);
  try {
    let total = 0;
    for (const chunk of chunks) {
      let done = 0;
      while (done < chunk.length) {
        offsets.setU64(0, chunk.offset + done);
        offsets.setU64(8, chunk.offset + done);
        const result = libc.copyFileRange(
          input,
          offsets.address,
          output,
          offsets.address + 8,
          chunk.length - done,
          0,
        );
        if (result.value < 0) {
          const unsupported = [EXDEV, EINVAL, ENOSYS, EOPNOTSUPP].includes(result.errno);
          if (unsupported && total === 0) return undefined; // not for this pair of files: fall back
          check("copy_file_range", result);
        }
        if (result.value === 0)
          throw new UffdError(
            "SYSCALL_FAILED",
            `copy_file_range hit the memfd's end at ${chunk.offset + done}`,
          );
        done += result.value;
        total += result.value;
      }
    }
    return total;
  } finally {
    offsets.free();
  }
}

function pwriteFromMapping(
  memfd: Memfd,
  fd: number,
  chunks: readonly ByteRange[],
  helperChoice: string,
): ExportResult {
  const mapping = check("mmap(memfd)", libc.mmap(0, memfd.size, PROT_READ, MAP_SHARED, memfd.fd, 0));
  try {
    // A stale bundled helper falls back to the loop below, which `method: "pwrite"` reports.
    const helper = readyNativeHelper(helperChoice, hostArch(), () => {});
    if (helper) {
      const list = new NativeMemory(Math.max(16, chunks.length * 16));
      try {
        chunks.forEach((c, i) => {
          list.setU64(i * 16, c.offset);
          list.setU64(i * 16 + 8, c.length);
        });
        const call = helperCall(helperLibrary(helper), "sbx_pwrite_ranges");
        call.paramsValue = [fd, mapping, list.address, chunks.length];
        const written = load(call as never) as unknown as number;
        if (written < 0) check("pwrite", { value: -1, errno: -written });
        return { bytes: written, method: "pwrite-native" };
      } finally {
        list.free();
      }
    }
    let total = 0;
    for (const chunk of chunks) {
      let done = 0;
      while (done < chunk.length) {
        const at = chunk.offset + done;
        const n = check("pwrite", libc.pwrite(fd, mapping + at, chunk.length - done, at));
        if (n === 0) throw new UffdError("SYSCALL_FAILED", `pwrite wrote nothing at ${at}`);
        done += n;
      }
      total += done;
    }
    return { bytes: total, method: "pwrite" };
  } finally {
    libc.munmap(mapping, memfd.size);
  }
}
