import { execFile } from "node:child_process";
import { subscribe, unsubscribe } from "node:diagnostics_channel";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import type { Worker } from "node:worker_threads";
import { describe, expect, it } from "vitest";
import { PageFaultServer } from "./server.ts";
import { faultLoops } from "./test-native-helper.ts";
import { dir, nativeHelper, peer, usePeerFixture } from "./test-peer-fixture.ts";
import { spawnTestPeer, writeTestMemoryFile } from "./testing/peer.ts";
import { faultWorkerExecArgv } from "./worker-exec-argv.ts";

const run = promisify(execFile);
const MiB = 1024 * 1024;

usePeerFixture({ prefix: "crash" });

describe("the fault worker's Node options", () => {
  it("keeps what resolves and loads modules, drops what describes the parent's own entry point", () => {
    expect(
      faultWorkerExecArgv([
        "--conditions=@sbx/source",
        "--input-type=module",
        "-C",
        "development",
        "--eval",
        "console.log(1)",
        "--import",
        "tsx",
        "--require=./preload.cjs",
        "--max-old-space-size=100",
        "--experimental-strip-types",
        "--no-warnings",
        "--title=x",
        "-p",
      ]),
    ).toEqual([
      "--conditions=@sbx/source",
      "-C",
      "development",
      "--import",
      "tsx",
      "--require=./preload.cjs",
      "--experimental-strip-types",
      "--no-warnings",
    ]);
  });
});

describe("a parent run as `node --input-type=module < script`", () => {
  it("serves the peer: the worker does not inherit --input-type (it crashed at start, and the peer hung)", async () => {
    const memoryFile = join(dir, "mem");
    const source = (file: string) => pathToFileURL(join(import.meta.dirname, file)).href;
    const script = `
      import { PageFaultServer } from ${JSON.stringify(source("server.ts"))};
      import { runTestPeer, writeTestMemoryFile } from ${JSON.stringify(source("testing/peer.ts"))};
      writeTestMemoryFile(${JSON.stringify(memoryFile)}, ${MiB});
      const server = new PageFaultServer({ socketPath: ${JSON.stringify(join(dir, "uffd.sock"))}, memoryFile: ${JSON.stringify(memoryFile)}, nativeHelper: "off" });
      await server.listen();
      const peer = await runTestPeer({ binary: ${JSON.stringify(peer)}, socketPath: server.socketPath, memoryFile: ${JSON.stringify(memoryFile)}, size: ${MiB}, timeoutMs: 20000 }).catch((error) => String(error));
      const stop = await server.stopped;
      console.log(JSON.stringify({ peer, reason: stop.reason, error: stop.error?.message }));
    `;
    const child = run(process.execPath, ["--conditions=@sbx/source", "--input-type=module"], {
      encoding: "utf8",
      timeout: 60_000,
    });
    child.child.stdin?.end(script);
    const { stdout } = await child;
    const outcome = JSON.parse(stdout.trim().split("\n").at(-1) as string);
    expect(outcome).toMatchObject({ peer: { ok: true, touched: 256, mismatches: 0 }, reason: "peer-exited" });
  });
});

describe.each(faultLoops(nativeHelper.path))(
  "a fault worker that dies mid-restore ($codePath)",
  ({ helper }) => {
    it("closes what the worker owned and kills the peer, which would otherwise hang on its next fault", async () => {
      const memoryFile = join(dir, "mem");
      const socketPath = join(dir, "uffd.sock");
      const size = 64 * MiB;
      writeTestMemoryFile(memoryFile, size);
      const workers: Worker[] = [];
      const announced = (message: unknown) => workers.push((message as { worker: Worker }).worker);
      subscribe("worker_threads", announced);
      let child: ReturnType<typeof spawnTestPeer> | undefined;
      try {
        await using server = new PageFaultServer({ socketPath, memoryFile, nativeHelper: helper });
        await server.listen();
        child = spawnTestPeer({
          binary: peer,
          socketPath,
          memoryFile,
          size,
          mode: "random",
          threads: 2,
        });
        const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
          child?.once("close", (code, signal) => resolve([code, signal])),
        );
        const ready = await server.ready;
        expect(ready.peerPid).toBe(child.pid);
        // A crash from outside the worker's own error handling: it stops without closing anything.
        expect(workers).toHaveLength(1);
        await workers[0]?.terminate();
        const stop = await server.stopped;
        expect(stop.reason).toBe("error");
        expect(stop.peerPid).toBe(child.pid);
        expect(stop.error?.message).toMatch(/fault worker crashed.*Firecracker \(pid \d+\) was killed/);
        expect(await exited).toEqual([null, "SIGKILL"]);
      } finally {
        unsubscribe("worker_threads", announced);
        // Only when the test failed: a peer nobody serves would otherwise outlive it.
        if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      }
    });
  },
);
