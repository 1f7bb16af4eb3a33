// Issue 18: the working set is copied in between faults, and any list, however wrong, restores exactly.
import { execFileSync } from "node:child_process";
import { readFileSync, readSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it, vi } from "vitest";
import { PageFaultServer, type PageFaultServerOptions } from "./server.ts";
import { faultLoops } from "./test-native-helper.ts";
import { dir, memoryFile, nativeHelper, peer, usePeerFixture, withHoldingPeer } from "./test-peer-fixture.ts";
import { runTestPeer, type TestPeerOptions } from "./testing/peer.ts";

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const PAGE = 4096;
const PAGES = SIZE / PAGE;

usePeerFixture({ prefix: "working-set", memorySize: SIZE });

function shuffled<T>(items: T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}

/** Bytes of `path` in the page cache (util-linux fincore), after dropping them first with `evict`. */
function cachedBytes(path: string, evict = false): number {
  if (evict) {
    execFileSync("sync", [path]); // dirty pages cannot be dropped
    execFileSync("dd", [`if=${path}`, "iflag=nocache", "count=0", "status=none"]);
  }
  return Number(
    execFileSync("fincore", ["--bytes", "--noheadings", "--output", "RES", path], {
      encoding: "utf8",
    }).trim(),
  );
}

const allPages = () => Array.from({ length: PAGES }, (_, page) => ({ offset: page * PAGE, length: PAGE }));

/** Lists no guest could have recorded: each must still restore byte-exactly. */
const hostileLists: Record<string, () => { offset: number; length: number }[]> = {
  shuffled: () => shuffled(allPages()),
  truncated: () => [{ offset: 0, length: 37 * PAGE }],
  oversized: () => [{ offset: SIZE - 2 * PAGE, length: 1024 * MiB }, ...allPages()],
  "out of range": () => [
    { offset: SIZE, length: PAGE },
    { offset: 2 ** 50, length: 64 * MiB },
  ],
  "unaligned and overlapping": () => [
    { offset: 100, length: 5000 },
    { offset: 3 * PAGE + 1, length: 10 * PAGE },
    { offset: 0, length: SIZE },
    { offset: 0, length: SIZE },
  ],
};

async function serve(server: Partial<PageFaultServerOptions>, peerOptions: Partial<TestPeerOptions> = {}) {
  const socketPath = join(dir, "uffd.sock");
  await using pfs = new PageFaultServer({ socketPath, memoryFile, ...server } as PageFaultServerOptions);
  await pfs.listen();
  const result = await runTestPeer({
    binary: peer,
    socketPath,
    memoryFile,
    size: SIZE,
    mode: "seq",
    timeoutMs: 30_000,
    ...peerOptions,
  });
  await pfs.stopped;
  return { result, metrics: pfs.metrics(), stop: await pfs.stopped };
}

for (const { codePath, helper } of faultLoops(nativeHelper.path)) {
  describe(`working-set prefetch (${codePath})`, () => {
    for (const [name, list] of Object.entries(hostileLists))
      it(`a ${name} list restores byte-exactly, every page installed once`, async () => {
        const { result, metrics, stop } = await serve({ nativeHelper: helper, workingSet: list() });
        expect(stop.reason).toBe("peer-exited");
        expect(result.mismatches).toBe(0);
        expect(result.touched).toBe(PAGES);
        // Each page is installed by exactly one of the two: a prefetch copy or an on-demand fault.
        expect(metrics.prefetched + metrics.faultsOnDemand).toBe(PAGES);
      });

    it("copies exactly the listed pages, from the file, while the guest touches nothing", async () => {
      const socketPath = join(dir, "uffd.sock");
      const listed = [7, 8, 9, 100, 4095, 2, 3000, 3001];
      const workingSet = [
        { offset: 7 * PAGE, length: 3 * PAGE },
        { offset: 100 * PAGE, length: PAGE },
        { offset: 4095 * PAGE, length: 8 * PAGE }, // runs past the memory: the page inside only
        { offset: 2 * PAGE, length: PAGE },
        { offset: 3000 * PAGE, length: 2 * PAGE },
      ];
      await using server = new PageFaultServer({ socketPath, memoryFile, nativeHelper: helper, workingSet });
      await server.listen();
      await withHoldingPeer({ socketPath, size: SIZE }, async () => {
        await server.ready;
        await vi.waitFor(() => expect(server.metrics().prefetchComplete).toBe(true), { timeout: 20_000 });
        await using memfd = server.takeMemfd();
        expect(memfd).toBeDefined();
        const file = readFileSync(memoryFile);
        const page = Buffer.alloc(PAGE);
        for (let index = 0; index < PAGES; index++) {
          readSync(memfd!.fd, page, 0, PAGE, index * PAGE);
          const expected = listed.includes(index)
            ? file.subarray(index * PAGE, (index + 1) * PAGE)
            : Buffer.alloc(PAGE);
          if (!page.equals(expected)) throw new Error(`page ${index} is not what the list says`);
        }
        const metrics = server.metrics();
        expect(metrics.prefetched).toBe(listed.length);
        expect(metrics.prefetchSkipped).toBe(7); // the 7 pages past the memory
        expect(metrics.faultsOnDemand).toBe(0);
      });
    });

    it("reads the listed pages of the memory file ahead before anyone connects", async () => {
      const evicted = cachedBytes(memoryFile, true);
      if (evicted !== 0) {
        console.log(`[uffd] read-ahead check skipped: ${memoryFile} stays cached (${evicted} bytes)`);
        return;
      }
      const socketPath = join(dir, "uffd.sock");
      await using server = new PageFaultServer({
        socketPath,
        memoryFile,
        nativeHelper: helper,
        workingSet: [{ offset: 4 * MiB, length: 4 * MiB }],
      });
      await server.listen();
      await vi.waitFor(() => expect(cachedBytes(memoryFile)).toBeGreaterThanOrEqual(4 * MiB), {
        timeout: 10_000,
      });
      // The list, not the whole file.
      expect(cachedBytes(memoryFile)).toBeLessThan(SIZE);
    });

    it("gives a stale working set up once the guest keeps faulting pages it does not list", async () => {
      // The last quarter, many times over: the peer's walk faults the 3072 pages below it first, long
      // before the prefetch is through the list.
      const lastQuarter = { offset: 3 * (SIZE / 4), length: SIZE / 4 };
      const socketPath = join(dir, "uffd.sock");
      await using server = new PageFaultServer({
        socketPath,
        memoryFile,
        nativeHelper: helper,
        workingSet: Array.from({ length: 400 }, () => lastQuarter),
      });
      await server.listen();
      const result = await runTestPeer({ binary: peer, socketPath, memoryFile, size: SIZE, mode: "seq" });
      await server.stopped;
      expect(result.mismatches).toBe(0);
      const metrics = server.metrics();
      expect(metrics.prefetchStale).toBe(true);
      expect(metrics.prefetchComplete).toBe(false);
      expect(metrics.prefetched + metrics.faultsOnDemand).toBe(PAGES);
      expect(server.warnings.join("\n")).toMatch(/working set is stale/);
    });

    it("a prefetch racing REMOVEs never brings removed pages back as file data", async () => {
      // The removed pages first in the list: the prefetch reaches them while the peer removes them.
      const removedPages = Array.from({ length: 256 }, (_, i) => PAGES - 512 + 2 * i);
      const first = removedPages.map((page) => ({ offset: page * PAGE, length: PAGE }));
      const { result, metrics } = await serve(
        { nativeHelper: helper, workingSet: [...first, ...allPages()] },
        { preRemove: 256, checkRemoved: true },
      );
      expect(result.mismatches).toBe(0);
      expect(result.zeroChecked).toBe(256);
      expect(result.zeroMismatches).toBe(0);
      expect(metrics.removes).toBeGreaterThan(0);
    });

    it("pages removed and touched again by racing threads read zeros with a prefetch running", async () => {
      const { result } = await serve(
        { nativeHelper: helper, workingSet: shuffled(allPages()) },
        { removeRace: 200, threads: 4 },
      );
      expect(result.mismatches).toBe(0);
      expect(result.zeroChecked).toBeGreaterThan(0);
      expect(result.zeroMismatches).toBe(0);
    });
  });
}
