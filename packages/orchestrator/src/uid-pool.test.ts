import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createConfig } from "./config.ts";
import { OrchestratorError } from "./errors.ts";
import { openOrchestratorState } from "./orchestrator-state.ts";
import { processIdentity } from "./process-identity.ts";
import { StateDirectory } from "./state-dir.ts";
import { parseUidRange, UidPool, uidsInUse } from "./uid-pool.ts";

const codeOf = (run: () => unknown) => {
  try {
    run();
  } catch (error) {
    return (error as OrchestratorError).code;
  }
  return undefined;
};

describe("jail uids", () => {
  it("parses from-to and refuses root, reversed and out-of-range ranges", () => {
    expect(parseUidRange("200000-299999")).toEqual({ from: 200_000, to: 299_999 });
    for (const bad of ["0-10", "10-5", "1-4294967295", "a-b"])
      expect(codeOf(() => parseUidRange(bad))).toBe("INVALID_OPTIONS");
  });

  it("hands out each uid once, round-robin past released ones, and says when the range is used up", () => {
    const pool = new UidPool({ from: 100, to: 102 });
    const first = [pool.allocate(), pool.allocate()];
    expect(first).toEqual([100, 101]);
    pool.release(100);
    // 100 was just released: the next free uid after the last one handed out comes first.
    expect(pool.allocate()).toBe(102);
    expect(pool.allocate()).toBe(100);
    expect(pool.inUse).toBe(3);
    const error = (() => {
      try {
        pool.allocate();
      } catch (e) {
        return e as OrchestratorError;
      }
    })();
    expect(error).toBeInstanceOf(OrchestratorError);
    expect(error?.code).toBe("CAPACITY_EXCEEDED");
    expect(error?.message).toMatch(/SBX_JAIL_UID_RANGE/);
  });

  it("skips uids a live process runs as (another state directory's VMs)", async () => {
    const pool = new UidPool({ from: 100, to: 102 });
    expect(pool.allocate(new Set([100, 101]))).toBe(102);
    expect(pool.allocate(new Set([101]))).toBe(100);
    const inUse = await uidsInUse();
    expect(inUse.has(process.getuid!())).toBe(true);
  });

  it("a uid reserved twice (two records) is refused", () => {
    const pool = new UidPool({ from: 1, to: 10 });
    pool.reserve(5);
    expect(codeOf(() => pool.reserve(5))).toBe("STATE_RECORD_INVALID");
  });

  describe("with a state directory", () => {
    let root: string;
    beforeEach(async () => {
      root = await mkdtemp(join(tmpdir(), "sbx-uids-"));
    });
    afterEach(async () => {
      await rm(root, { recursive: true, force: true });
    });

    it("never hands out a uid a sandbox record holds, after the state is reopened", async () => {
      const stateDir = join(root, "state");
      const directory = await StateDirectory.open(stateDir);
      // A record of a live owner (this process): reclaim leaves it, and its uid stays taken.
      await directory.writeRecord({
        schemaVersion: 1,
        id: "aaa111",
        createdAt: new Date().toISOString(),
        state: "running",
        owner: (await processIdentity(process.pid))!,
        processes: [],
        sockets: [],
        jail: { uid: 301, gid: 301, directory: join(root, "jail", "firecracker", "aaa111"), cgroups: [] },
      });
      await using state = await openOrchestratorState(
        createConfig({ stateDir, jailUidRange: "300-302", unjailed: true }),
      );
      expect(state.uidPool.has(301)).toBe(true);
      expect([state.uidPool.allocate(), state.uidPool.allocate()].sort()).toEqual([300, 302]);
      expect(codeOf(() => state.uidPool.allocate())).toBe("CAPACITY_EXCEEDED");
    });
  });
});
