import { closeSync, openSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { UffdError } from "./errors.ts";
import { fdKind, parseHandshake } from "./handshake.ts";
import { libc } from "./libc.ts";
import { MFD_CLOEXEC, O_CLOEXEC, O_NONBLOCK, SYSCALLS } from "./linux.ts";
import { NativeMemory } from "./native-memory.ts";

let uffd: number;
let memfd: number;
let regularFd: number;

beforeAll(() => {
  uffd = libc.syscall3(SYSCALLS.amd64.userfaultfd, O_CLOEXEC | O_NONBLOCK, 0, 0).value;
  const name = new NativeMemory(4096);
  name.bytes.write("guest_mem\0");
  memfd = libc.syscall3(SYSCALLS.amd64.memfd_create, name.address, MFD_CLOEXEC, 0).value;
  name.free();
  regularFd = openSync("/proc/self/stat", "r");
});
afterAll(() => {
  libc.close(uffd);
  libc.close(memfd);
  closeSync(regularFd);
});

const MiB = 1024 * 1024;
const body = (regions: object[]) => Buffer.from(JSON.stringify(regions));
// What Firecracker 1.14.2 was observed sending: page_size and page_size_kib both in bytes.
const observed = {
  base_host_virt_addr: 139886550056960,
  size: 256 * MiB,
  offset: 0,
  page_size: 4096,
  page_size_kib: 4096,
};

function reason(data: Buffer, fds: number[], fileSize = 256 * MiB): string {
  try {
    parseHandshake(data, fds, fileSize);
  } catch (error) {
    expect(error).toBeInstanceOf(UffdError);
    expect((error as UffdError).code).toBe("BAD_HANDSHAKE");
    return (error as UffdError).message;
  }
  return "accepted";
}

describe("parseHandshake", () => {
  it("accepts what Firecracker 1.14.2 sends, and a memfd as second fd", () => {
    const h = parseHandshake(body([observed]), [uffd], 256 * MiB);
    expect(h).toEqual({
      regions: [{ base: observed.base_host_virt_addr, size: 256 * MiB, offset: 0, pageSize: 4096 }],
      uffdFd: uffd,
      memfdFd: undefined,
    });
    expect(parseHandshake(body([observed]), [uffd, memfd], 256 * MiB).memfdFd).toBe(memfd);
  });

  it("reads a lone page_size_kib as KiB for 4 and 2048, as bytes for 4096 and 2097152, else refuses", () => {
    const only = (kib: number) => [
      { base_host_virt_addr: 2 * MiB, size: 2 * MiB, offset: 0, page_size_kib: kib },
    ];
    expect(parseHandshake(body(only(4)), [uffd], 4 * MiB).regions[0]?.pageSize).toBe(4096);
    expect(parseHandshake(body(only(2048)), [uffd], 4 * MiB).regions[0]?.pageSize).toBe(2 * MiB);
    expect(parseHandshake(body(only(4096)), [uffd], 4 * MiB).regions[0]?.pageSize).toBe(4096);
    expect(parseHandshake(body(only(2 * MiB)), [uffd], 4 * MiB).regions[0]?.pageSize).toBe(2 * MiB);
    expect(reason(body(only(8)), [uffd])).toMatch(/page size must be 4 KiB or 2 MiB/);
    expect(reason(body([{ ...observed, page_size: 8192 }]), [uffd])).toMatch(/page size/);
  });

  it("refuses bad JSON, no regions, overlaps, misalignment and regions past the file", () => {
    expect(reason(Buffer.from("[{"), [uffd])).toMatch(/not JSON/);
    expect(reason(body([]), [uffd])).toMatch(/no memory regions/);
    expect(reason(Buffer.from('{"a":1}'), [uffd])).toMatch(/expected array/);
    const a = { base_host_virt_addr: 16 * MiB, size: 8 * MiB, offset: 0, page_size: 4096 };
    expect(reason(body([a, { ...a, base_host_virt_addr: 20 * MiB, offset: 8 * MiB }]), [uffd])).toMatch(
      /overlaps/,
    );
    expect(reason(body([{ ...a, base_host_virt_addr: 16 * MiB + 512 }]), [uffd])).toMatch(/not aligned/);
    expect(reason(body([{ ...a, offset: 100 }]), [uffd])).toMatch(/not aligned/);
    expect(reason(body([{ ...a, page_size: 2 * MiB, size: 3 * MiB }]), [uffd])).toMatch(/not aligned/);
    expect(reason(body([{ ...a, offset: 252 * MiB }]), [uffd])).toMatch(/past the memory file/);
    expect(reason(body([{ ...a, size: -4096 }]), [uffd])).toMatch(/size/);
    expect(reason(body([{ ...a, extra: 1 }]), [uffd])).toBe("accepted"); // forks may add fields to mappings
  });

  it("refuses zero or more than two fds, a first fd that is no userfaultfd, a second that is no memfd", () => {
    expect(fdKind(regularFd)).toBe("other");
    expect(reason(body([observed]), [])).toMatch(/no fd/);
    expect(reason(body([observed]), [uffd, memfd, regularFd])).toMatch(/3 fds/);
    expect(reason(body([observed]), [regularFd])).toMatch(/first fd is not a userfaultfd/);
    expect(reason(body([observed]), [memfd])).toMatch(/first fd is not a userfaultfd/);
    expect(reason(body([observed]), [uffd, regularFd])).toMatch(/second fd is not a memfd/);
    expect(reason(body([observed]), [uffd, uffd])).toMatch(/second fd is not a memfd/);
  });
});
