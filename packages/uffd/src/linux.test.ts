// Every number of linux.ts, checked against this kernel: the C headers agree, and the calls succeed.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { fdKind } from "./handshake.ts";
import { libc, nativeView } from "./libc.ts";
import * as k from "./linux.ts";
import { MAP_ANONYMOUS, MAP_PRIVATE, O_CLOEXEC, O_NONBLOCK, PROT_READ, PROT_WRITE } from "./linux.ts";
import { NativeMemory } from "./native-memory.ts";
import { fdCount } from "./test-counts.ts";

const sys = k.SYSCALLS.amd64;

describe("kernel constants", () => {
  it("match what gcc computes from <linux/userfaultfd.h> and <sys/syscall.h>", () => {
    const dir = mkdtempSync(join(tmpdir(), "sbx-uffd-consts-"));
    try {
      const source = join(dir, "c.c");
      writeFileSync(
        source,
        `#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <linux/userfaultfd.h>
#include <linux/memfd.h>
int main(void){printf("%lu %lu %lu %lu %lu %lu %lu %d %d %d %d %d\\n",(unsigned long)UFFDIO_API,(unsigned long)UFFDIO_REGISTER,(unsigned long)UFFDIO_UNREGISTER,(unsigned long)UFFDIO_WAKE,(unsigned long)UFFDIO_COPY,(unsigned long)UFFDIO_ZEROPAGE,(unsigned long)UFFDIO_WRITEPROTECT,SYS_userfaultfd,SYS_memfd_create,(int)sizeof(struct uffd_msg),(int)sizeof(struct uffdio_copy),MFD_HUGETLB);}`,
      );
      execFileSync("gcc", ["-o", join(dir, "c"), source]);
      const values = execFileSync(join(dir, "c"), { encoding: "utf8" }).trim().split(" ").map(Number);
      expect(values).toEqual([
        k.UFFDIO_API,
        k.UFFDIO_REGISTER,
        k.UFFDIO_UNREGISTER,
        k.UFFDIO_WAKE,
        k.UFFDIO_COPY,
        k.UFFDIO_ZEROPAGE,
        k.UFFDIO_WRITEPROTECT,
        sys.userfaultfd,
        sys.memfd_create,
        k.STRUCT_SIZE.uffd_msg,
        k.STRUCT_SIZE.uffdio_copy,
        k.MFD_HUGETLB,
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("every flag, errno and struct field offset matches what gcc takes from the headers", () => {
    // [C expression, the value linux.ts has]: one program prints them all.
    const pairs: [string, number][] = [
      ["offsetof(struct uffd_msg, event)", k.UFFD_MSG.event],
      ["offsetof(struct uffd_msg, arg.pagefault.flags)", k.UFFD_MSG.pagefaultFlags],
      ["offsetof(struct uffd_msg, arg.pagefault.address)", k.UFFD_MSG.pagefaultAddress],
      ["offsetof(struct uffd_msg, arg.remove.start)", k.UFFD_MSG.removeStart],
      ["offsetof(struct uffd_msg, arg.remove.end)", k.UFFD_MSG.removeEnd],
      ["offsetof(struct uffdio_range, start)", k.UFFDIO_RANGE_FIELDS.start],
      ["offsetof(struct uffdio_range, len)", k.UFFDIO_RANGE_FIELDS.len],
      ["offsetof(struct uffdio_copy, dst)", k.UFFDIO_COPY_FIELDS.dst],
      ["offsetof(struct uffdio_copy, src)", k.UFFDIO_COPY_FIELDS.src],
      ["offsetof(struct uffdio_copy, len)", k.UFFDIO_COPY_FIELDS.len],
      ["offsetof(struct uffdio_copy, mode)", k.UFFDIO_COPY_FIELDS.mode],
      ["offsetof(struct uffdio_copy, copy)", k.UFFDIO_COPY_FIELDS.copy],
      ["offsetof(struct uffdio_zeropage, range)", k.UFFDIO_ZEROPAGE_FIELDS.range],
      ["offsetof(struct uffdio_zeropage, mode)", k.UFFDIO_ZEROPAGE_FIELDS.mode],
      ["offsetof(struct uffdio_zeropage, zeropage)", k.UFFDIO_ZEROPAGE_FIELDS.zeropage],
      ["offsetof(struct uffdio_writeprotect, range)", k.UFFDIO_WRITEPROTECT_FIELDS.range],
      ["offsetof(struct uffdio_writeprotect, mode)", k.UFFDIO_WRITEPROTECT_FIELDS.mode],
      ["offsetof(struct uffdio_register, range)", k.UFFDIO_REGISTER_FIELDS.range],
      ["offsetof(struct uffdio_register, mode)", k.UFFDIO_REGISTER_FIELDS.mode],
      ["offsetof(struct uffdio_register, ioctls)", k.UFFDIO_REGISTER_FIELDS.ioctls],
      ["sizeof(struct uffdio_api)", k.STRUCT_SIZE.uffdio_api],
      ["sizeof(struct uffdio_range)", k.STRUCT_SIZE.uffdio_range],
      ["sizeof(struct uffdio_register)", k.STRUCT_SIZE.uffdio_register],
      ["sizeof(struct uffdio_zeropage)", k.STRUCT_SIZE.uffdio_zeropage],
      ["sizeof(struct uffdio_writeprotect)", k.STRUCT_SIZE.uffdio_writeprotect],
      ["sizeof(struct pollfd)", k.POLLFD.size],
      ["offsetof(struct pollfd, fd)", k.POLLFD.fd],
      ["offsetof(struct pollfd, events)", k.POLLFD.events],
      ["offsetof(struct pollfd, revents)", k.POLLFD.revents],
      ["sizeof(struct ucred)", k.UCRED.size],
      ["offsetof(struct ucred, pid)", k.UCRED.pid],
      ["offsetof(struct ucred, uid)", k.UCRED.uid],
      ["offsetof(struct ucred, gid)", k.UCRED.gid],
      ["UFFD_API", k.UFFD_API],
      ["UFFD_EVENT_PAGEFAULT", k.UFFD_EVENT_PAGEFAULT],
      ["UFFD_EVENT_FORK", k.UFFD_EVENT_FORK],
      ["UFFD_EVENT_REMAP", k.UFFD_EVENT_REMAP],
      ["UFFD_EVENT_REMOVE", k.UFFD_EVENT_REMOVE],
      ["UFFD_EVENT_UNMAP", k.UFFD_EVENT_UNMAP],
      ["UFFD_PAGEFAULT_FLAG_WRITE", k.UFFD_PAGEFAULT_FLAG_WRITE],
      ["UFFD_PAGEFAULT_FLAG_WP", k.UFFD_PAGEFAULT_FLAG_WP],
      ["UFFD_FEATURE_EVENT_REMOVE", k.UFFD_FEATURE_EVENT_REMOVE],
      ["UFFD_FEATURE_WP_HUGETLBFS_SHMEM", k.UFFD_FEATURE_WP_HUGETLBFS_SHMEM],
      ["UFFDIO_REGISTER_MODE_MISSING", k.UFFDIO_REGISTER_MODE_MISSING],
      ["UFFDIO_REGISTER_MODE_WP", k.UFFDIO_REGISTER_MODE_WP],
      ["UFFDIO_COPY_MODE_DONTWAKE", k.UFFDIO_COPY_MODE_DONTWAKE],
      ["UFFDIO_COPY_MODE_WP", k.UFFDIO_COPY_MODE_WP],
      ["UFFDIO_WRITEPROTECT_MODE_WP", k.UFFDIO_WRITEPROTECT_MODE_WP],
      ["MFD_CLOEXEC", k.MFD_CLOEXEC],
      ["MFD_ALLOW_SEALING", k.MFD_ALLOW_SEALING],
      ["PROT_READ", k.PROT_READ],
      ["PROT_WRITE", k.PROT_WRITE],
      ["MAP_SHARED", k.MAP_SHARED],
      ["MAP_PRIVATE", k.MAP_PRIVATE],
      ["MAP_ANONYMOUS", k.MAP_ANONYMOUS],
      ["MAP_FIXED", k.MAP_FIXED],
      ["MAP_NORESERVE", k.MAP_NORESERVE],
      ["MADV_WILLNEED", k.MADV_WILLNEED],
      ["AF_UNIX", k.AF_UNIX],
      ["SOCK_STREAM", k.SOCK_STREAM],
      ["SOCK_CLOEXEC", k.SOCK_CLOEXEC],
      ["SOL_SOCKET", k.SOL_SOCKET],
      ["SCM_RIGHTS", k.SCM_RIGHTS],
      ["SO_PEERCRED", k.SO_PEERCRED],
      ["MSG_CTRUNC", k.MSG_CTRUNC],
      ["MSG_CMSG_CLOEXEC", k.MSG_CMSG_CLOEXEC],
      ["POLLIN", k.POLLIN],
      ["POLLERR", k.POLLERR],
      ["POLLHUP", k.POLLHUP],
      ["POLLNVAL", k.POLLNVAL],
      ["O_CLOEXEC", k.O_CLOEXEC],
      ["O_NONBLOCK", k.O_NONBLOCK],
      ["F_GETFD", k.F_GETFD],
      ["F_DUPFD_CLOEXEC", k.F_DUPFD_CLOEXEC],
      ["F_ADD_SEALS", k.F_ADD_SEALS],
      ["F_GET_SEALS", k.F_GET_SEALS],
      ["F_SEAL_SEAL", k.F_SEAL_SEAL],
      ["F_SEAL_SHRINK", k.F_SEAL_SHRINK],
      ["F_SEAL_GROW", k.F_SEAL_GROW],
      ["F_SEAL_WRITE", k.F_SEAL_WRITE],
      ["SEEK_DATA", k.SEEK_DATA],
      ["SEEK_HOLE", k.SEEK_HOLE],
      ["FD_CLOEXEC", k.FD_CLOEXEC],
      ["EFD_CLOEXEC", k.EFD_CLOEXEC],
      ["EFD_NONBLOCK", k.EFD_NONBLOCK],
      ["SYS_pidfd_send_signal", k.SYS_PIDFD_SEND_SIGNAL],
      ["SYS_pidfd_open", k.SYS_PIDFD_OPEN],
      ["SIGKILL", k.SIGKILL],
      ["ENOENT", k.ENOENT],
      ["ESRCH", k.ESRCH],
      ["EINTR", k.EINTR],
      ["ENXIO", k.ENXIO],
      ["EAGAIN", k.EAGAIN],
      ["ENOMEM", k.ENOMEM],
      ["EEXIST", k.EEXIST],
      ["EXDEV", k.EXDEV],
      ["EINVAL", k.EINVAL],
      ["ENOSYS", k.ENOSYS],
      ["EOPNOTSUPP", k.EOPNOTSUPP],
    ];
    const dir = mkdtempSync(join(tmpdir(), "sbx-uffd-layout-"));
    try {
      const source = join(dir, "c.c");
      writeFileSync(
        source,
        `#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/memfd.h>
#include <linux/userfaultfd.h>
int main(void) {
${pairs.map(([expression]) => `  printf("%lld\\n", (long long)(${expression}));`).join("\n")}
}
`,
      );
      execFileSync("gcc", ["-o", join(dir, "c"), source]);
      const values = execFileSync(join(dir, "c"), { encoding: "utf8" }).trim().split("\n").map(Number);
      const mismatches = pairs
        .map(([expression, value], i) => ({ expression, linuxTs: value, headers: values[i] }))
        .filter((pair) => pair.linuxTs !== pair.headers);
      expect(mismatches).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("drive a real userfaultfd: API, REGISTER (missing + wp), COPY, ZEROPAGE, WRITEPROTECT, WAKE, UNREGISTER", () => {
    const before = fdCount();
    const uffd = libc.syscall3(sys.userfaultfd, O_CLOEXEC | O_NONBLOCK, 0, 0).value;
    expect(uffd).toBeGreaterThan(2);
    expect(fdKind(uffd)).toBe("userfaultfd");
    const s = new NativeMemory(4096);
    const size = 4 * 4096;
    const region = libc.mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0).value;
    try {
      s.setU64(0, k.UFFD_API);
      s.setU64(8, 0);
      expect(libc.ioctl(uffd, k.UFFDIO_API, s.address).value).toBe(0);
      s.setU64(0, region);
      s.setU64(8, size);
      s.setU64(16, k.UFFDIO_REGISTER_MODE_MISSING | k.UFFDIO_REGISTER_MODE_WP);
      expect(libc.ioctl(uffd, k.UFFDIO_REGISTER, s.address)).toEqual({ value: 0, errno: 0 });
      // COPY one page from a source page filled with 0x5a; the ioctl installs it without a fault.
      const source = s.address + 2048;
      s.bytes.fill(0x5a, 2048, 4096);
      s.setU64(512, region);
      s.setU64(520, source);
      s.setU64(528, 2048); // half a page is EINVAL: lengths are whole pages
      s.setU64(536, 0);
      expect(libc.ioctl(uffd, k.UFFDIO_COPY, s.address + 512).errno).toBe(22);
      const page = new NativeMemory(4096);
      page.bytes.fill(0x5a);
      s.setU64(512, region);
      s.setU64(520, page.address);
      s.setU64(528, 4096);
      s.setU64(536, 0);
      s.setU64(544, 0);
      expect(libc.ioctl(uffd, k.UFFDIO_COPY, s.address + 512).value).toBe(0);
      expect(s.u64(544)).toBe(4096); // `copy` reports the bytes copied
      expect(nativeView(region, 4096).every((b) => b === 0x5a)).toBe(true);
      // The same page again: EEXIST.
      expect(libc.ioctl(uffd, k.UFFDIO_COPY, s.address + 512).errno).toBe(17);
      page.free();
      s.setU64(600, region + 4096);
      s.setU64(608, 4096);
      s.setU64(616, 0);
      expect(libc.ioctl(uffd, k.UFFDIO_ZEROPAGE, s.address + 600).value).toBe(0);
      expect(nativeView(region + 4096, 4096).every((b) => b === 0)).toBe(true);
      s.setU64(700, region);
      s.setU64(708, 4096);
      s.setU64(716, k.UFFDIO_WRITEPROTECT_MODE_WP);
      expect(libc.ioctl(uffd, k.UFFDIO_WRITEPROTECT, s.address + 700).value).toBe(0);
      s.setU64(716, 0);
      expect(libc.ioctl(uffd, k.UFFDIO_WRITEPROTECT, s.address + 700).value).toBe(0);
      s.setU64(800, region);
      s.setU64(808, size);
      expect(libc.ioctl(uffd, k.UFFDIO_WAKE, s.address + 800).value).toBe(0);
      expect(libc.ioctl(uffd, k.UFFDIO_UNREGISTER, s.address + 800).value).toBe(0);
    } finally {
      libc.munmap(region, size);
      s.free();
      libc.close(uffd);
    }
    expect(fdCount()).toBe(before);
  });

  it("creates a memfd with memfd_create", () => {
    const name = new NativeMemory(4096);
    name.bytes.write("sbx-test\0", 0);
    const fd = libc.syscall3(sys.memfd_create, name.address, k.MFD_CLOEXEC, 0).value;
    name.free();
    expect(fd).toBeGreaterThan(2);
    expect(fdKind(fd)).toBe("memfd");
    expect(libc.ftruncate(fd, 8192).value).toBe(0);
    libc.close(fd);
  });
});
