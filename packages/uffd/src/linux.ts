// Every Linux number the package uses, in one place: syscall numbers, ioctl numbers computed the way
// the kernel headers do, flags, errno values, and the layout of each struct the fault loop fills or
// reads. linux.test.ts checks them against gcc and the headers, and drives a real userfaultfd with them.
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

/**
 * Field offsets (bytes) of the structs the fault loop fills or reads, 64-bit layout. `uffd_msg` is
 * `event` (u8) then a union at 8: `pagefault` { flags u64, address u64 } or `remove` { start, end }.
 */
export const UFFD_MSG = {
  event: 0,
  pagefaultFlags: 8,
  pagefaultAddress: 16,
  removeStart: 8,
  removeEnd: 16,
} as const;
export const UFFDIO_RANGE_FIELDS = { start: 0, len: 8 } as const;
export const UFFDIO_COPY_FIELDS = { dst: 0, src: 8, len: 16, mode: 24, copy: 32 } as const;
export const UFFDIO_ZEROPAGE_FIELDS = { range: 0, mode: 16, zeropage: 24 } as const;
export const UFFDIO_WRITEPROTECT_FIELDS = { range: 0, mode: 16 } as const;
export const UFFDIO_REGISTER_FIELDS = { range: 0, mode: 16, ioctls: 24 } as const;
/** struct pollfd { int fd; short events; short revents; } */
export const POLLFD = { size: 8, fd: 0, events: 4, revents: 6 } as const;
/** struct ucred { pid_t pid; uid_t uid; gid_t gid; } */
export const UCRED = { size: 12, pid: 0, uid: 4, gid: 8 } as const;

// <sys/mman.h>
export const MADV_WILLNEED = 3;
export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_FIXED = 0x10;
export const MAP_NORESERVE = 0x4000;
export const MAP_FAILED = -1;
// <bits/socket.h>, <asm-generic/socket.h>
export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SCM_RIGHTS = 1;
export const SO_PEERCRED = 17;
export const MSG_CTRUNC = 0x8;
export const MSG_CMSG_CLOEXEC = 0x40000000;
// <poll.h>
export const POLLIN = 0x1;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;
export const POLLNVAL = 0x20;
// <fcntl.h>, <sys/eventfd.h>
export const O_CLOEXEC = 0o2000000;
export const O_NONBLOCK = 0o4000;
export const F_GETFD = 1;
export const F_DUPFD_CLOEXEC = 1030;
export const F_ADD_SEALS = 1033;
export const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 0x1;
export const F_SEAL_SHRINK = 0x2;
export const F_SEAL_GROW = 0x4;
export const F_SEAL_WRITE = 0x8;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
export const ENXIO = 6;
export const FD_CLOEXEC = 1;
export const EFD_CLOEXEC = O_CLOEXEC;
export const EFD_NONBLOCK = O_NONBLOCK;
// <asm-generic/unistd.h>: the same numbers on x86_64 and arm64 (syscalls added after the tables merged)
export const SYS_PIDFD_SEND_SIGNAL = 424;
export const SYS_PIDFD_OPEN = 434;
// <asm-generic/signal.h>
export const SIGKILL = 9;
// <asm-generic/errno-base.h>, <asm-generic/errno.h>
export const EINTR = 4;
export const ESRCH = 3;
export const ENOENT = 2;
export const EAGAIN = 11;
export const ENOMEM = 12;
export const EEXIST = 17;
export const EINVAL = 22;
export const EXDEV = 18;
export const ENOSYS = 38;
export const EOPNOTSUPP = 95;
