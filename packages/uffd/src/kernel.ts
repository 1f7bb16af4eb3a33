// userfaultfd and memfd constants, computed the way the kernel headers do. Every number here is checked
// against the running kernel by kernel.test.ts (the ioctl or syscall succeeds).
import type { Arch } from "@sbx/arch";

/** Syscall numbers (<asm/unistd_64.h> on x86_64, <asm-generic/unistd.h> on arm64). */
export const SYSCALLS: Readonly<Record<Arch, { userfaultfd: number; memfd_create: number }>> = {
  amd64: { userfaultfd: 323, memfd_create: 319 },
  arm64: { userfaultfd: 282, memfd_create: 279 },
};

// <asm-generic/ioctl.h>: the same encoding on x86_64 and arm64.
const IOC_WRITE = 1;
const IOC_READ = 2;
const ioc = (dir: number, type: number, nr: number, size: number) =>
  ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;
const iowr = (type: number, nr: number, size: number) => ioc(IOC_READ | IOC_WRITE, type, nr, size);
const ior = (type: number, nr: number, size: number) => ioc(IOC_READ, type, nr, size);

// <linux/userfaultfd.h>
const UFFDIO = 0xaa;
/** Struct sizes from <linux/userfaultfd.h> (64-bit layout: every field is a __u64 but `mode` pairs). */
export const STRUCT_SIZE = {
  uffdio_api: 24, // api, features, ioctls
  uffdio_range: 16, // start, len
  uffdio_register: 32, // range, mode, ioctls
  uffdio_copy: 40, // dst, src, len, mode, copy (__s64)
  uffdio_zeropage: 32, // range, mode, zeropage (__s64)
  uffdio_writeprotect: 24, // range, mode
  uffd_msg: 32,
} as const;

export const UFFDIO_API = iowr(UFFDIO, 0x3f, STRUCT_SIZE.uffdio_api);
export const UFFDIO_REGISTER = iowr(UFFDIO, 0x00, STRUCT_SIZE.uffdio_register);
export const UFFDIO_UNREGISTER = ior(UFFDIO, 0x01, STRUCT_SIZE.uffdio_range);
export const UFFDIO_WAKE = ior(UFFDIO, 0x02, STRUCT_SIZE.uffdio_range);
export const UFFDIO_COPY = iowr(UFFDIO, 0x03, STRUCT_SIZE.uffdio_copy);
export const UFFDIO_ZEROPAGE = iowr(UFFDIO, 0x04, STRUCT_SIZE.uffdio_zeropage);
export const UFFDIO_WRITEPROTECT = iowr(UFFDIO, 0x06, STRUCT_SIZE.uffdio_writeprotect);

export const UFFD_API = 0xaa;
export const UFFD_EVENT_PAGEFAULT = 0x12;
export const UFFD_EVENT_FORK = 0x13;
export const UFFD_EVENT_REMAP = 0x14;
export const UFFD_EVENT_REMOVE = 0x15;
export const UFFD_EVENT_UNMAP = 0x16;
export const UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0;
export const UFFD_PAGEFAULT_FLAG_WP = 1 << 1;
export const UFFD_FEATURE_EVENT_REMOVE = 1 << 3;
export const UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12;
export const UFFDIO_REGISTER_MODE_MISSING = 1 << 0;
export const UFFDIO_REGISTER_MODE_WP = 1 << 1;
export const UFFDIO_COPY_MODE_DONTWAKE = 1 << 0;
export const UFFDIO_COPY_MODE_WP = 1 << 1;
export const UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0;

// <linux/memfd.h>
export const MFD_CLOEXEC = 0x1;
export const MFD_ALLOW_SEALING = 0x2;
export const MFD_HUGETLB = 0x4;

export const PAGE_4K = 4096;
export const PAGE_2M = 2 * 1024 * 1024;
