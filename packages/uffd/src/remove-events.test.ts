import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { PageFaultServer } from "./server.ts";
import { faultLoops } from "./test-native-helper.ts";
import { dir, nativeHelper, peer, usePeerFixture } from "./test-peer-fixture.ts";
import { runTestPeer, type TestPeerOptions, writeTestMemoryFile } from "./testing/peer.ts";

const MiB = 1024 * 1024;

usePeerFixture({ prefix: "remove" });

async function serve(helper: string, size: number, peerOptions: Partial<TestPeerOptions>) {
  const memoryFile = join(dir, "mem");
  const socketPath = join(dir, "uffd.sock");
  writeTestMemoryFile(memoryFile, size);
  await using server = new PageFaultServer({ socketPath, memoryFile, nativeHelper: helper });
  await server.listen();
  const result = await runTestPeer({
    binary: peer,
    socketPath,
    memoryFile,
    size,
    timeoutMs: 120_000,
    ...peerOptions,
  });
  const stop = await server.stopped;
  return { result, stop, metrics: server.metrics(), codePath: server.codePath };
}

describe.each(faultLoops(nativeHelper.path))(
  "REMOVE events from a balloon ($codePath)",
  ({ codePath, helper }) => {
    it("a page touched right after its REMOVE reads as zeros (touch, remove, touch again, from 32 threads)", async () => {
      const {
        result,
        stop,
        metrics,
        codePath: used,
      } = await serve(helper, 32 * MiB, {
        threads: 32,
        removeRace: 250,
      });
      expect(used).toBe(codePath);
      expect(stop.reason).toBe("peer-exited");
      expect(result.zeroChecked).toBe(8000);
      expect(result.mismatches).toBe(0);
      expect(result.zeroMismatches).toBe(0);
      expect(metrics.removes).toBe(8000);
    });

    it("thousands of single-page REMOVEs (past the old 8,192-range limit): removed pages read as zeros, the rest byte-exact", async () => {
      const { result, metrics } = await serve(helper, 64 * MiB, { preRemove: 5000, checkRemoved: true });
      expect(result.touched).toBe(16384 - 10000);
      expect(result.mismatches).toBe(0);
      expect(result.zeroChecked).toBe(5000);
      expect(result.zeroMismatches).toBe(0);
      expect(metrics.removes).toBe(5000);
      expect(metrics.zeroPages).toBe(5000);
      expect(metrics.pagesCopied).toBe(16384 - 10000);
    });
  },
);
