// Every constant of kernel.ts, checked against this kernel: the C headers agree, and the calls succeed.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { fdKind } from "./handshake.ts";
import * as k from "./kernel.ts";
import {
  libc,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  nativeView,
  O_CLOEXEC,
  O_NONBLOCK,
  PROT_READ,
  PROT_WRITE,
} from "./libc.ts";
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
