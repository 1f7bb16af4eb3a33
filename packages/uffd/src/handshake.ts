// What Firecracker sends after connecting: a JSON array of guest memory mappings, with the userfaultfd
// (and, on forks that back guest memory with a memfd, the memfd) as SCM_RIGHTS fds. Everything here is
// checked before a single fault is served: the peer is untrusted.
import { readlinkSync } from "node:fs";
import { z } from "zod";
import { UffdError } from "./errors.ts";
import { PAGE_2M, PAGE_4K } from "./linux.ts";

const address = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

// Firecracker 1.14.2 sends both `page_size` (bytes) and the deprecated `page_size_kib`, which carries
// bytes despite its name; older releases sent `page_size_kib` alone, in KiB as documented.
/** One guest memory region as Firecracker describes it in its handshake. */
export const guestRegionMappingSchema = z
  .object({
    base_host_virt_addr: address,
    size: address.positive(),
    offset: address,
    page_size: address.optional(),
    page_size_kib: address.optional(),
  })
  .transform((region, context) => {
    let pageSize = region.page_size;
    if (pageSize === undefined && region.page_size_kib !== undefined) {
      const kib = region.page_size_kib;
      pageSize =
        kib === 4 || kib === 2048 ? kib * 1024 : kib === PAGE_4K || kib === PAGE_2M ? kib : undefined;
    }
    if (pageSize !== PAGE_4K && pageSize !== PAGE_2M) {
      context.addIssue({
        code: "custom",
        message: `page size must be 4 KiB or 2 MiB (page_size ${region.page_size}, page_size_kib ${region.page_size_kib})`,
      });
      return z.NEVER;
    }
    return { base: region.base_host_virt_addr, size: region.size, offset: region.offset, pageSize };
  });

/** Firecracker's handshake body: its guest memory regions. */
export const handshakeSchema = z.array(guestRegionMappingSchema).min(1, "no memory regions").max(64);

/** A guest memory region: where it is mapped in Firecracker and where its bytes are in the memory file. */
export interface GuestRegion {
  /** Guest memory's address in the peer (Firecracker) process. */
  base: number;
  size: number;
  /** Where the region's bytes start in the memory file. */
  offset: number;
  pageSize: number;
}

/** A validated handshake: the regions and the fds that came with them. */
export interface Handshake {
  regions: GuestRegion[];
  uffdFd: number;
  /** The guest memory memfd, from forks that send one. */
  memfdFd: number | undefined;
}

/** What an fd is, from its /proc link: `anon_inode:[userfaultfd]`, `/memfd:name (deleted)`, ... */
export function fdKind(fd: number): "userfaultfd" | "memfd" | "other" {
  let target: string;
  try {
    target = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return "other";
  }
  if (target === "anon_inode:[userfaultfd]") return "userfaultfd";
  if (target.startsWith("/memfd:")) return "memfd";
  return "other";
}

/**
 * Validates the mappings and the fds. Throws BAD_HANDSHAKE naming the first problem; the caller closes
 * the fds then (they are not closed here, so a caller can never close an fd twice).
 */
export function parseHandshake(data: Buffer, fds: readonly number[], memoryFileSize: number): Handshake {
  const fail = (reason: string): never => {
    throw new UffdError("BAD_HANDSHAKE", `Firecracker's mapping message rejected: ${reason}`);
  };
  if (fds.length === 0) fail("no fd came with it (expected the userfaultfd)");
  if (fds.length > 2) fail(`${fds.length} fds came with it (expected the userfaultfd and at most a memfd)`);
  let json: unknown;
  try {
    json = JSON.parse(data.toString("utf8"));
  } catch {
    fail(`the body is not JSON: ${JSON.stringify(data.subarray(0, 120).toString("utf8"))}`);
  }
  const parsed = handshakeSchema.safeParse(json);
  if (!parsed.success) fail(z.prettifyError(parsed.error));
  const regions = [...(parsed.data ?? [])].sort((a, b) => a.base - b.base);
  let previousEnd = 0;
  for (const r of regions) {
    const where = `region at 0x${r.base.toString(16)}`;
    if (r.base % r.pageSize || r.size % r.pageSize || r.offset % r.pageSize)
      fail(`${where} is not aligned to its ${r.pageSize}-byte pages`);
    if (r.base < previousEnd) fail(`${where} overlaps the region before it`);
    if (r.offset + r.size > memoryFileSize)
      fail(
        `${where} ends at file offset ${r.offset + r.size}, past the memory file's ${memoryFileSize} bytes`,
      );
    previousEnd = r.base + r.size;
  }
  if (fdKind(fds[0] as number) !== "userfaultfd") fail("the first fd is not a userfaultfd");
  if (fds.length === 2 && fdKind(fds[1] as number) !== "memfd") fail("the second fd is not a memfd");
  return { regions, uffdFd: fds[0] as number, memfdFd: fds[1] };
}
