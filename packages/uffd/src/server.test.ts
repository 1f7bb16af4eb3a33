import { subscribe, unsubscribe } from "node:diagnostics_channel";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { join } from "node:path";
import { describe, expect, it, vi } from "vitest";
import { UffdError } from "./errors.ts";
import {
  PageFaultServer,
  type PageFaultServerOptions,
  prewarmPageFaultWorkers,
  warmPageFaultWorkerCount,
} from "./server.ts";
import { faultLoops } from "./test-native-helper.ts";
import { dir, memoryFile, nativeHelper, peer, socketPath, usePeerFixture } from "./test-peer-fixture.ts";
import { runTestPeer, spawnTestPeer, type TestPeerOptions } from "./testing/peer.ts";

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;

usePeerFixture({ prefix: "test", memorySize: SIZE + 4 * MiB });

/** Starts the test peer against this test's socket and memory file; `closed` settles when it exits. */
function startPeer(options: Partial<TestPeerOptions>) {
  const child = spawnTestPeer({ binary: peer, socketPath, memoryFile, size: SIZE, ...options });
  const closed = new Promise((resolve) => child.once("close", resolve));
  return { child, closed };
}

async function servedWith(
  peerOptions: Partial<TestPeerOptions>,
  serverOptions: Partial<PageFaultServerOptions> = {},
) {
  await using server = new PageFaultServer({ socketPath, memoryFile, ...serverOptions });
  await server.listen();
  const result = await runTestPeer({
    binary: peer,
    socketPath,
    memoryFile,
    size: SIZE,
    timeoutMs: 30_000,
    ...peerOptions,
  });
  const stop = await server.stopped;
  return { result, stop, metrics: server.metrics(), ready: await server.ready, codePath: server.codePath };
}

describe.each(faultLoops(nativeHelper.path))(
  "the page-fault server restores memory byte-exactly ($codePath)",
  ({ codePath, helper }) => {
    const served = async (peerOptions: Partial<TestPeerOptions>) => {
      const outcome = await servedWith(peerOptions, { nativeHelper: helper });
      expect(outcome.codePath).toBe(codePath);
      return outcome;
    };

    it("sequential reads, 4 KiB pages; stops cleanly when the peer exits; one connection only", async () => {
      const { result, stop, metrics, ready } = await served({ mode: "seq" });
      expect(result).toMatchObject({ ok: true, touched: SIZE / 4096, mismatches: 0 });
      expect(metrics).toMatchObject({
        faults: SIZE / 4096,
        pagesCopied: SIZE / 4096,
        bytes: SIZE,
        zeroPages: 0,
      });
      expect(metrics.latencyP50Us).toBeGreaterThan(0);
      expect(stop.reason).toBe("peer-exited");
      expect(ready.regions[0]).toMatchObject({ size: SIZE, pageSize: 4096 });
      expect(existsSync(socketPath)).toBe(false);
    });

    it("random reads and writes from 4 threads", async () => {
      const random = await served({ mode: "random", threads: 4 });
      expect(random.result.mismatches).toBe(0);
      expect(random.metrics.faults).toBeGreaterThan(1000);
      const write = await served({ mode: "write", threads: 4 });
      expect(write.result).toMatchObject({ touched: SIZE / 4096, mismatches: 0 });
      expect(write.metrics.faults).toBe(SIZE / 4096);
    });

    it("a region at a file offset, and memfd-backed guest memory sent as a second fd", async () => {
      const offset = await served({ mode: "seq", fileOffset: 4 * MiB });
      expect(offset.result.mismatches).toBe(0);
      const memfd = await served({ mode: "seq", backing: "memfd", fds: 2 });
      expect(memfd.result.mismatches).toBe(0);
      expect(memfd.ready.memfd).toBe(true);
    });

    it("REMOVE events: a madvised range comes back as zero pages", async () => {
      const { result, metrics } = await served({
        mode: "seq",
        remove: { offset: 4 * MiB, length: 64 * 4096 },
      });
      expect(result).toMatchObject({ mismatches: 0, zeroChecked: 64, zeroMismatches: 0 });
      expect(metrics.removes).toBeGreaterThanOrEqual(1);
      expect(metrics.zeroPages).toBe(64);
    });

    it("2 MiB hugetlb pages, when hugepages can be reserved", async (context) => {
      const path = "/proc/sys/vm/nr_hugepages";
      const original = readFileSync(path, "utf8").trim();
      const needed = SIZE / (2 * MiB);
      // Two spare: a hugetlb UFFDIO_COPY into MAP_NORESERVE memory may take a temporary page.
      const reserve = needed + 2;
      try {
        writeFileSync(path, String(Number(original) + reserve));
        const free = Number(/HugePages_Free:\s+(\d+)/.exec(readFileSync("/proc/meminfo", "utf8"))?.[1] ?? 0);
        if (free < reserve) {
          console.log(`[uffd] hugetlb test skipped: only ${free} of ${reserve} huge pages could be reserved`);
          context.skip();
        }
        const { result, metrics } = await served({
          mode: "seq",
          pageSize: 2097152,
          backing: "hugetlb",
          remove: { offset: 4 * MiB, length: 2 * MiB },
        });
        expect(result).toMatchObject({ mismatches: 0, zeroMismatches: 0 });
        expect(metrics.faults).toBe(needed + 1);
        expect(metrics.zeroPages).toBe(1);
      } finally {
        writeFileSync(path, original);
      }
    });
  },
);

describe("the page-fault server refuses what Firecracker would not send", () => {
  const refusal = async (peerOptions: Partial<TestPeerOptions>) => {
    await using server = new PageFaultServer({ socketPath, memoryFile });
    await server.listen();
    const { child, closed } = startPeer({ mode: "none", holdMs: 3000, ...peerOptions });
    const stop = await server.stopped;
    child.kill("SIGKILL");
    await closed;
    await expect(server.ready).rejects.toBeInstanceOf(UffdError);
    expect(stop.reason).toBe("error");
    return stop.error as UffdError;
  };
  const region = (extra: object) =>
    JSON.stringify([
      { base_host_virt_addr: 0x7f0000000000, size: SIZE, offset: 0, page_size: 4096, ...extra },
    ]);

  it("bad mappings: JSON, overlaps, page sizes, bounds", async () => {
    expect((await refusal({ body: "not json" })).message).toMatch(/not JSON/);
    expect((await refusal({ body: "[]" })).message).toMatch(/no memory regions/);
    expect((await refusal({ body: region({ page_size: 8192 }) })).message).toMatch(/page size/);
    expect((await refusal({ body: region({ size: 64 * MiB }) })).message).toMatch(/past the memory file/);
    const overlapping = JSON.stringify([
      { base_host_virt_addr: 0x7f0000000000, size: 8 * MiB, offset: 0, page_size: 4096 },
      { base_host_virt_addr: 0x7f0000400000, size: 8 * MiB, offset: 0, page_size: 4096 },
    ]);
    expect((await refusal({ body: overlapping })).message).toMatch(/overlaps/);
  });

  it("bad fds: none, three, a pipe for the userfaultfd, a pipe for the memfd", async () => {
    expect((await refusal({ fds: 0 })).message).toMatch(/no fd/);
    expect((await refusal({ backing: "memfd", fds: 2, extraFd: true })).message).toMatch(/3 fds/);
    expect((await refusal({ fds: 0, extraFd: true })).message).toMatch(/first fd is not a userfaultfd/);
    expect((await refusal({ fds: 1, extraFd: true })).message).toMatch(/second fd is not a memfd/);
  });

  /** A server expecting `expected` of its peer, and a peer that holds its connection: how it stopped. */
  async function mismatch(expected: Pick<PageFaultServerOptions, "expectedPeerPid" | "expectedPeerUid">) {
    await using server = new PageFaultServer({ socketPath, memoryFile, ...expected });
    await server.listen();
    const { child, closed } = startPeer({ mode: "none", holdMs: 2000 });
    const stop = await server.stopped;
    child.kill("SIGKILL");
    await closed;
    return { stop, pid: child.pid };
  }

  it("a peer that is not the expected pid", async () => {
    const { stop, pid } = await mismatch({ expectedPeerPid: 1 });
    expect(stop.error?.code).toBe("PEER_MISMATCH");
    expect(stop.peerPid).toBe(pid);
  });

  it("a peer that is not the expected uid, and one that is", async () => {
    // The test peer runs as this process's uid (root here): any other uid is refused.
    const uid = process.getuid?.() ?? 0;
    const { stop } = await mismatch({ expectedPeerUid: uid + 1 });
    expect(stop.error?.code).toBe("PEER_MISMATCH");
    expect(stop.error?.message).toMatch(new RegExp(`as uid ${uid}; expected Firecracker's uid ${uid + 1}`));
    await using server = new PageFaultServer({ socketPath, memoryFile, expectedPeerUid: uid });
    await server.listen();
    const { child, closed } = startPeer({ mode: "none", holdMs: 60_000 });
    await expect(server.ready).resolves.toMatchObject({ peerPid: child.pid });
    child.kill("SIGKILL");
    await closed;
  });
});

describe("the page-fault server's lifecycle", () => {
  it("stops cleanly when the peer is killed mid-run, and reports its pid", async () => {
    await using server = new PageFaultServer({ socketPath, memoryFile });
    await server.listen();
    const { child, closed } = startPeer({ mode: "random", threads: 2 });
    await server.ready;
    await vi.waitFor(() => expect(server.metrics().faults).toBeGreaterThan(0)); // mid-run: faults flowing
    child.kill("SIGKILL");
    const stop = await server.stopped;
    await closed;
    expect(stop).toMatchObject({ reason: "peer-exited", peerPid: child.pid, error: undefined });
  });

  it("times out a missing connection and a silent one", async () => {
    await using quiet = new PageFaultServer({ socketPath, memoryFile, acceptTimeoutMs: 100 });
    await quiet.listen();
    expect((await quiet.stopped).error?.code).toBe("ACCEPT_TIMEOUT");
    await using silent = new PageFaultServer({ socketPath, memoryFile, handshakeTimeoutMs: 100 });
    await silent.listen();
    const client = connect(socketPath);
    expect((await silent.stopped).error?.code).toBe("HANDSHAKE_TIMEOUT");
    client.destroy();
  });

  it("a peer that hangs up before sending", async () => {
    await using server = new PageFaultServer({ socketPath, memoryFile });
    await server.listen();
    const client = connect(socketPath);
    await new Promise((resolve) => client.once("connect", resolve));
    client.end();
    expect((await server.stopped).error?.code).toBe("PEER_CLOSED");
    client.destroy();
  });

  it("close() before and after a handshake; the socket is 0600 and goes away", async () => {
    const idle = new PageFaultServer({ socketPath, memoryFile });
    await idle.listen();
    expect(statSync(socketPath).mode & 0o777).toBe(0o600);
    expect(await idle.close()).toMatchObject({ reason: "closed" });
    expect(existsSync(socketPath)).toBe(false);
    await expect(idle.ready).rejects.toMatchObject({ code: "CLOSED" });

    const busy = new PageFaultServer({ socketPath, memoryFile });
    await busy.listen();
    const { child, closed } = startPeer({ mode: "none", holdMs: 5000 });
    await busy.ready;
    expect(await busy.close()).toMatchObject({ reason: "closed", peerPid: child.pid });
    child.kill("SIGKILL");
    await closed;
  });

  it("replaces a stale socket file, refuses a live one or a regular file", async () => {
    const stale = createServer();
    await new Promise<void>((resolve) => stale.listen(socketPath, resolve));
    const refused = new PageFaultServer({ socketPath, memoryFile });
    await expect(refused.listen()).rejects.toMatchObject({ code: "SOCKET_IN_USE" });
    await refused.close();
    // Close without unlinking: a stale socket file nobody listens on.
    await new Promise<void>((resolve) => stale.close(() => resolve()));
    writeFileSync(join(dir, "x"), "");
    const notSocket = new PageFaultServer({ socketPath: join(dir, "x"), memoryFile });
    await expect(notSocket.listen()).rejects.toThrow(/not a socket/);
    await notSocket.close();
    const { result } = await servedWith({ mode: "seq" });
    expect(result.mismatches).toBe(0);
  });

  it("hands out a warm worker when one is prewarmed, and serves the same bytes", async () => {
    prewarmPageFaultWorkers(1);
    try {
      expect(warmPageFaultWorkerCount()).toBe(1);
      const { result, codePath } = await servedWith({ mode: "seq" }, { nativeHelper: "off" });
      expect(result.mismatches).toBe(0);
      expect(codePath).toBe("pure-ffi");
      const again = await servedWith({ mode: "random" });
      expect(again.result.mismatches).toBe(0);
    } finally {
      prewarmPageFaultWorkers(0);
    }
    expect(() => prewarmPageFaultWorkers(-1)).toThrow(UffdError);
  });

  it("replaces a taken warm worker once the restore goes quiet, not during its fault burst", async () => {
    prewarmPageFaultWorkers(1);
    // Node announces every new worker thread on this channel: the refill is observed the moment it
    // happens, with the server's fault count and the peer's state at that moment.
    let onRefill: (at: { faults: number; peerRunning: boolean }) => void = () => {};
    const refilled = new Promise<{ faults: number; peerRunning: boolean }>((resolve) => {
      onRefill = resolve;
    });
    let observe: () => void = () => {};
    const announced = () => observe();
    try {
      expect(warmPageFaultWorkerCount()).toBe(1);
      await using server = new PageFaultServer({ socketPath, memoryFile });
      await server.listen();
      expect(warmPageFaultWorkerCount()).toBe(0); // taken; a new one now would compete with the faults
      // The peer touches every page, then holds its connection far longer than the test runs: a
      // refill seen while it holds is the quiet's, not the peer leaving's.
      const { child, closed } = startPeer({ mode: "seq", holdMs: 600_000 });
      observe = () => onRefill({ faults: server.metrics().faults, peerRunning: child.exitCode === null });
      subscribe("worker_threads", announced);
      await server.ready;
      const at = await refilled;
      expect(at).toEqual({ faults: SIZE / 4096, peerRunning: true });
      expect(warmPageFaultWorkerCount()).toBe(1);
      child.kill("SIGKILL");
      await closed;
      expect((await server.stopped).reason).toBe("peer-exited");
    } finally {
      unsubscribe("worker_threads", announced);
      prewarmPageFaultWorkers(0);
    }
  });

  it("validates its options", () => {
    expect(() => new PageFaultServer({ socketPath: "x".repeat(200), memoryFile })).toThrow(/107 bytes/);
    expect(() => new PageFaultServer({ socketPath, memoryFile: "" })).toThrow(UffdError);
  });
});
