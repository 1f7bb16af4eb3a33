// Issue 6: layered memory, dirty tracking, prefetch and memfd export, with real faults from the peer.
import { closeSync, ftruncateSync, openSync, readFileSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { check } from "./errors.ts";
import { libc } from "./libc.ts";
import { F_GET_SEALS, F_SEAL_GROW, F_SEAL_SHRINK } from "./linux.ts";
import { createMemfd, exportRanges, type Memfd } from "./memfd.ts";
import { PageFaultServer, type PageFaultServerOptions } from "./server.ts";
import { faultLoops } from "./test-native-helper.ts";
import { dir, nativeHelper, peer, usePeerFixture } from "./test-peer-fixture.ts";
import { runTestPeer, type TestPeerOptions, writeTestMemoryFile } from "./testing/peer.ts";

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const PAGE = 4096;

usePeerFixture({ prefix: "layers" });

/** A sparse diff file: only `pages` are written (from `source`), the rest are holes. */
function writeDiff(path: string, source: Buffer, pages: number[]): void {
  const fd = openSync(path, "w");
  try {
    for (const page of pages) writeSync(fd, source, page * PAGE, PAGE, page * PAGE);
    // Extend to the full size without writing: the tail stays a hole.
    writeSync(fd, Buffer.alloc(0), 0, 0, SIZE);
  } finally {
    closeSync(fd);
  }
  const handle = openSync(path, "r+");
  try {
    ftruncateSync(handle, SIZE);
  } finally {
    closeSync(handle);
  }
}

async function serve(
  server: Partial<PageFaultServerOptions>,
  peerOptions: Partial<TestPeerOptions> & { memoryFile: string },
  whileOpen: (server: PageFaultServer) => void | Promise<void> = () => {},
) {
  const socketPath = join(dir, "uffd.sock");
  await using pfs = new PageFaultServer({ socketPath, ...server } as PageFaultServerOptions);
  await pfs.listen();
  const result = await runTestPeer({
    binary: peer,
    socketPath,
    size: SIZE,
    timeoutMs: 30_000,
    ...peerOptions,
  });
  await pfs.stopped;
  await whileOpen(pfs);
  return { result, server: pfs, ready: await pfs.ready };
}

describe.each(faultLoops(nativeHelper.path))("layered memory ($codePath)", ({ codePath, helper }) => {
  it("serves every page from the newest layer that has it; holes inherit from the parent; REMOVE zeroes", async () => {
    const base = join(dir, "base");
    writeTestMemoryFile(base, SIZE, 1);
    writeTestMemoryFile(join(dir, "src1"), SIZE, 2);
    writeTestMemoryFile(join(dir, "src2"), SIZE, 3);
    const one = readFileSync(join(dir, "src1"));
    const two = readFileSync(join(dir, "src2"));
    const d1Pages = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 100, 4095];
    const d2Pages = [15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 2000];
    writeDiff(join(dir, "diff1"), one, d1Pages);
    writeDiff(join(dir, "diff2"), two, d2Pages);
    // What the guest must see: base, overlaid by diff1, overlaid by diff2.
    const expected = readFileSync(base);
    for (const p of d1Pages) one.copy(expected, p * PAGE, p * PAGE, (p + 1) * PAGE);
    for (const p of d2Pages) two.copy(expected, p * PAGE, p * PAGE, (p + 1) * PAGE);
    writeFileSync(join(dir, "expected"), expected);
    const layers = [
      { path: base },
      { path: join(dir, "diff1") }, // pages found with SEEK_DATA / SEEK_HOLE
      {
        path: join(dir, "diff2"),
        ranges: [
          { offset: 15 * PAGE, length: 11 * PAGE },
          { offset: 2000 * PAGE, length: PAGE },
        ],
      },
    ];

    const random = await serve(
      { layers, nativeHelper: helper },
      { memoryFile: join(dir, "expected"), mode: "random", threads: 2 },
    );
    expect(random.result.mismatches).toBe(0);
    expect(random.server.codePath).toBe(codePath);

    // Every page once, in order, from one thread: the trace says which file offsets were served, and a
    // madvised range spanning base and diff pages comes back as zeros, not as any layer's bytes.
    const seq = await serve(
      { layers, nativeHelper: helper },
      { memoryFile: join(dir, "expected"), mode: "seq", remove: { offset: 8 * PAGE, length: 16 * PAGE } },
    );
    expect(seq.result).toMatchObject({
      touched: SIZE / PAGE,
      mismatches: 0,
      zeroChecked: 16,
      zeroMismatches: 0,
    });
    // The trace holds one entry per page of the file at most: the zero-page refaults come after it filled.
    expect(seq.server.faultTrace()).toEqual(Array.from({ length: SIZE / PAGE }, (_, page) => page * PAGE));
    expect(seq.server.metrics()).toMatchObject({ zeroPages: 16, pagesCopied: SIZE / PAGE });
  });
});

describe("layered memory", () => {
  it("refuses a diff range past its file", async () => {
    const base = join(dir, "base");
    writeTestMemoryFile(base, SIZE);
    const socketPath = join(dir, "uffd.sock");
    await using pfs = new PageFaultServer({
      socketPath,
      layers: [{ path: base }, { path: base, ranges: [{ offset: SIZE, length: PAGE }] }],
    });
    await pfs.listen();
    const run = runTestPeer({
      binary: peer,
      socketPath,
      memoryFile: base,
      size: SIZE,
      timeoutMs: 5_000,
    }).catch((e: Error) => e);
    const stop = await pfs.stopped;
    expect(stop.error?.code).toBe("MEMORY_FILE_INVALID");
    expect(await run).toBeInstanceOf(Error); // the peer hangs without a handler, and is killed
  });
});

describe.each(faultLoops(nativeHelper.path))("dirty tracking ($codePath)", ({ codePath, helper }) => {
  it("records exactly the pages written after the restore", async () => {
    const memoryFile = join(dir, "mem");
    writeTestMemoryFile(memoryFile, SIZE);
    const written = [3, 77, 1000, 4095];
    const { result, server, ready } = await serve(
      { memoryFile, trackDirty: true, nativeHelper: helper },
      { memoryFile, mode: "seq", writePages: written },
    );
    expect(server.codePath).toBe(codePath);
    expect(result).toMatchObject({ mismatches: 0, written: written.length });
    expect(ready.trackDirty).toBe(true);
    expect(server.dirtyPages()).toEqual(written.map((p) => ({ offset: p * PAGE, length: PAGE })));
    expect(server.metrics().writeProtectFaults).toBe(written.length);
  });

  it("write faults on missing pages are dirty at once, without a second fault", async () => {
    const memoryFile = join(dir, "mem");
    writeTestMemoryFile(memoryFile, SIZE);
    const { result, server } = await serve(
      { memoryFile, trackDirty: true, nativeHelper: helper },
      { memoryFile, mode: "write" },
    );
    expect(result.mismatches).toBe(0);
    expect(server.dirtyPages()).toEqual([{ offset: 0, length: SIZE }]);
    expect(server.metrics().writeProtectFaults).toBe(0);
  });

  it("keeps tracking across a REMOVE: zero pages arrive write-protected, reads never mark them", async () => {
    const memoryFile = join(dir, "mem");
    writeTestMemoryFile(memoryFile, SIZE);
    const written = [3, 77];
    const removedPages = { first: 64, count: 64 };
    const { result, server } = await serve(
      { memoryFile, trackDirty: true, nativeHelper: helper },
      {
        memoryFile,
        mode: "seq",
        writePages: written,
        remove: { offset: removedPages.first * PAGE, length: removedPages.count * PAGE },
      },
    );
    expect(result).toMatchObject({ mismatches: 0, zeroMismatches: 0, zeroChecked: removedPages.count });
    expect(server.dirtyPages()).toEqual(written.map((p) => ({ offset: p * PAGE, length: PAGE })));
    expect(server.metrics()).toMatchObject({
      removes: 1,
      zeroPages: removedPages.count,
      writeProtectFaults: 2,
    });
  });

  it("is disabled with one warning where it cannot work (memfd memory without WP_HUGETLBFS_SHMEM)", async () => {
    const memoryFile = join(dir, "mem");
    writeTestMemoryFile(memoryFile, SIZE);
    const { result, server, ready } = await serve(
      { memoryFile, trackDirty: true, nativeHelper: helper },
      { memoryFile, backing: "memfd", fds: 2 },
    );
    expect(result.mismatches).toBe(0);
    expect(ready.trackDirty).toBe(false);
    expect(server.warnings).toHaveLength(1);
    expect(server.warnings[0]).toMatch(/WP_HUGETLBFS_SHMEM.*Diff snapshot/);
  });
});

describe("prefetch and the fault trace", () => {
  it("copies the prefetch list before the first fault, and traces the rest in order", async () => {
    const memoryFile = join(dir, "mem");
    writeTestMemoryFile(memoryFile, SIZE);
    const prefetch = Array.from({ length: 100 }, (_, i) => ((i * 7) % 4096) * PAGE);
    const { result, server } = await serve({ memoryFile, prefetch }, { memoryFile, mode: "seq" });
    expect(result.mismatches).toBe(0);
    const metrics = server.metrics();
    expect(metrics.prefetched).toBe(100);
    expect(metrics.faults).toBe(SIZE / PAGE - 100);
    const trace = server.faultTrace();
    const prefetched = new Set(prefetch);
    expect(trace).toEqual(
      Array.from({ length: SIZE / PAGE }, (_, i) => i * PAGE).filter((offset) => !prefetched.has(offset)),
    );
  });
});

describe("memfd", () => {
  it("exports what the peer wrote after the peer exited, from the memfd it sent", async () => {
    const memoryFile = join(dir, "mem");
    writeTestMemoryFile(memoryFile, SIZE);
    let taken: Memfd | undefined;
    let again: Memfd | undefined;
    const { result, ready } = await serve(
      { memoryFile },
      { memoryFile, backing: "memfd", fds: 2, mode: "seq", writePages: [1, 2, 500] },
      async (server) => {
        taken = server.takeMemfd(); // the caller owns it now: it outlives the server
        // close() returns once the fault worker has exited: the memfd must survive that (CI once lost it).
        await server.close();
        again = server.takeMemfd();
      },
    );
    expect(result.written).toBe(3);
    expect(ready.memfd).toBe(true);
    expect(again).toBeUndefined();
    await using memfd = taken!;
    expect(memfd.size).toBe(SIZE);
    const destination = join(dir, "diff");
    const exported = exportRanges(
      memfd,
      [
        { offset: PAGE, length: 2 * PAGE },
        { offset: 500 * PAGE, length: PAGE },
      ],
      destination,
    );
    expect(exported.bytes).toBe(3 * PAGE);
    expect(["pwrite", "pwrite-native"]).toContain(exported.method); // EXDEV from a memfd into ext4
    const original = readFileSync(memoryFile);
    const out = readFileSync(destination);
    expect(out.length).toBe(SIZE);
    for (const page of [1, 2, 500]) {
      const expected = Buffer.from(original.subarray(page * PAGE, (page + 1) * PAGE));
      expected[0] = 0xee;
      expect(out.subarray(page * PAGE, (page + 1) * PAGE).equals(expected)).toBe(true);
    }
    expect(out.subarray(3 * PAGE, 500 * PAGE).every((b) => b === 0)).toBe(true);
  });

  it("creates sealed memfds, and copy_file_range works memfd to memfd's file twin where the kernel allows", async () => {
    await using memfd = createMemfd("sbx-test", 4 * PAGE, { seals: ["shrink", "grow"] });
    expect(memfd.size).toBe(4 * PAGE);
    // The seals asked for, no more (F_SEAL_WRITE would refuse the pattern below), and the kernel enforces them.
    expect(check("fcntl(F_GET_SEALS)", libc.fcntl(memfd.fd, F_GET_SEALS, 0))).toBe(
      F_SEAL_SHRINK | F_SEAL_GROW,
    );
    expect(() => ftruncateSync(memfd.fd, 2 * PAGE)).toThrow(expect.objectContaining({ code: "EPERM" }));
    expect(() => ftruncateSync(memfd.fd, 8 * PAGE)).toThrow(expect.objectContaining({ code: "EPERM" }));
    const pattern = Buffer.alloc(4 * PAGE);
    for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 131 + (i >> 12)) & 0xff;
    expect(writeSync(memfd.fd, pattern, 0, pattern.length, 0)).toBe(pattern.length);

    expect(() => exportRanges(memfd, [{ offset: 3 * PAGE, length: 2 * PAGE }], join(dir, "x"))).toThrow(
      /past the memfd/,
    );
    // Into another memfd through its /proc/self/fd twin: both live on the kernel's internal shmem
    // mount, one superblock, so copy_file_range copies in the kernel.
    await using twin = createMemfd("sbx-twin", 4 * PAGE);
    const twinPath = `/proc/self/fd/${twin.fd}`;
    const ranges = [
      { offset: 0, length: PAGE },
      { offset: 2 * PAGE, length: 2 * PAGE },
    ];
    const copied = exportRanges(memfd, ranges, twinPath);
    expect(copied).toEqual({ bytes: 3 * PAGE, method: "copy_file_range" });
    const inTwin = readFileSync(twinPath);
    expect(inTwin.subarray(0, PAGE).equals(pattern.subarray(0, PAGE))).toBe(true);
    expect(inTwin.subarray(PAGE, 2 * PAGE).every((b) => b === 0)).toBe(true); // not in the ranges
    expect(inTwin.subarray(2 * PAGE).equals(pattern.subarray(2 * PAGE))).toBe(true);
    // Into a file on another filesystem: the fallback, with the same bytes.
    const result = exportRanges(memfd, [{ offset: 0, length: 4 * PAGE }], join(dir, "y"));
    expect(result.bytes).toBe(4 * PAGE);
    expect(readFileSync(join(dir, "y")).equals(pattern)).toBe(true);
    expect(() => createMemfd("bad name/..", PAGE)).toThrow(/memfd name/);
  });
});
