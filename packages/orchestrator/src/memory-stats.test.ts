// Reclaimed-memory accounting without a VM: the UFFD test peer plays Firecracker (the handshake, then a
// guest touching every page), then madvise(MADV_DONTNEED)s a range as Firecracker's balloon does for
// reported free pages. The page-fault server sees the REMOVE; the kernel's counters for the peer show
// the drop. balloon.test.ts shows the same with a real Firecracker and the test guest's balloon driver.
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PageFaultServer } from "@sbx/uffd";
import { buildTestPeer, spawnTestPeer, writeTestMemoryFile } from "@sbx/uffd/testing";
import { describe, expect, it } from "vitest";
import { OrchestratorError } from "./errors.ts";
import {
  memoryTotals,
  parseProcessMemory,
  readProcessMemory,
  recordedSandboxesMemory,
  type SandboxMemoryStats,
  sandboxesMemoryStats,
  sandboxMemoryStats,
} from "./memory-stats.ts";
import { type ProcessIdentity, processIdentity } from "./process-identity.ts";
import type { SandboxRecord } from "./state-dir.ts";
import { childPids } from "./test-capabilities.ts";

const MiB = 1024 * 1024;
const uffdSkip = process.getuid?.() === 0 ? undefined : "needs root for userfaultfd";

function recordOf(
  id: string,
  firecracker: ProcessIdentity | undefined,
  extra: Partial<SandboxRecord> = {},
): SandboxRecord {
  return {
    schemaVersion: 1,
    id,
    createdAt: new Date().toISOString(),
    state: "running",
    owner: firecracker ?? { pid: process.pid, startTime: "1", cmdline: ["node"] },
    processes: firecracker ? [{ role: "firecracker", identity: firecracker }] : [],
    sockets: [],
    ...extra,
  };
}

/** The identity of a running child once exec made it `command`. */
async function identityOnceExeced(pid: number, command: string): Promise<ProcessIdentity> {
  for (let i = 0; i < 400; i++) {
    const identity = await processIdentity(pid);
    if (identity?.cmdline[0]?.endsWith(command)) return identity;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  throw new Error(`${command} did not start`);
}

describe("process memory", () => {
  it("parses VmRSS and VmHWM, and says which is missing", () => {
    expect(parseProcessMemory("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n", 1)).toEqual({
      residentBytes: 1024 * 1024,
      peakResidentBytes: 2048 * 1024,
    });
    expect(() => parseProcessMemory("Name:\tkthreadd\n", 2)).toThrow(/VmRSS/);
  });

  it("a process that is gone is NOT_AVAILABLE", async () => {
    const error = await readProcessMemory(2 ** 22 + 1).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OrchestratorError);
    expect((error as OrchestratorError).code).toBe("NOT_AVAILABLE");
  });

  it("reclaimed is the drop from the peak, never negative", () => {
    const stats = sandboxMemoryStats(
      { residentBytes: 10 * MiB, peakResidentBytes: 30 * MiB },
      { removes: 3, zeroPages: 7 },
      { guestBytes: 64 * MiB, balloon: true },
    );
    expect(stats).toMatchObject({ reclaimedBytes: 20 * MiB, removeEvents: 3, zeroPages: 7, balloon: true });
    expect(
      sandboxMemoryStats(
        { residentBytes: 5, peakResidentBytes: 5 },
        { removes: 0, zeroPages: 0 },
        { guestBytes: 1, balloon: false },
      ).reclaimedBytes,
    ).toBe(0);
  });
});

describe("memory of the sandboxes a state directory records", () => {
  it("reads each running sandbox's Firecracker, and leaves out paused ones, gone ones and reused pids", async () => {
    const children = childPids();
    const sleeper = spawn("sleep", ["1000"], { stdio: "ignore" });
    const exited = new Promise((resolve) => sleeper.once("exit", resolve));
    try {
      const identity = await identityOnceExeced(sleeper.pid as number, "sleep");
      const gone = { pid: 2 ** 22 + 1, startTime: "1", cmdline: ["firecracker"] };
      const memory = await recordedSandboxesMemory([
        recordOf("running", identity),
        recordOf("paused", identity, { state: "paused" }),
        recordOf("creating", identity, { state: "creating" }),
        recordOf("gone", gone),
        recordOf("reused", { ...identity, startTime: String(Number(identity.startTime) + 1) }),
        recordOf("no-firecracker", undefined),
      ]);
      expect(memory.map((m) => m.id)).toEqual(["running"]);
      const [running] = memory;
      expect(running!.residentBytes).toBeGreaterThan(0);
      expect(running!.peakResidentBytes).toBeGreaterThanOrEqual(running!.residentBytes);
      expect(running!.reclaimedBytes).toBe(running!.peakResidentBytes - running!.residentBytes);
    } finally {
      sleeper.kill("SIGKILL");
      await exited;
    }
    expect(childPids()).toEqual(children);
  });

  it("totals add up resident and reclaimed bytes", () => {
    expect(
      memoryTotals([
        { residentBytes: 10 * MiB, reclaimedBytes: 2 * MiB },
        { residentBytes: 5 * MiB, reclaimedBytes: 0 },
      ]),
    ).toEqual({ sandboxes: 2, residentBytes: 15 * MiB, reclaimedBytes: 2 * MiB });
    expect(memoryTotals([])).toEqual({ sandboxes: 0, residentBytes: 0, reclaimedBytes: 0 });
  });

  it("an orchestrator's sandboxes by id with totals; one that went away meanwhile is left out, other errors are not", async () => {
    const stats = (resident: number, peak: number): SandboxMemoryStats =>
      sandboxMemoryStats(
        { residentBytes: resident, peakResidentBytes: peak },
        { removes: 1, zeroPages: 0 },
        { guestBytes: 128 * MiB, balloon: true },
      );
    const gone = async () => {
      throw new OrchestratorError("NOT_AVAILABLE", "process 1 is gone: no memory to report");
    };
    const report = await sandboxesMemoryStats([
      { id: "a", memoryStats: async () => stats(50 * MiB, 98 * MiB) },
      { id: "gone", memoryStats: gone },
      { id: "b", memoryStats: async () => stats(60 * MiB, 60 * MiB) },
    ]);
    expect(report.sandboxes.map((s) => [s.id, s.reclaimedBytes])).toEqual([
      ["a", 48 * MiB],
      ["b", 0],
    ]);
    expect(report.totals).toEqual({ sandboxes: 2, residentBytes: 110 * MiB, reclaimedBytes: 48 * MiB });
    const broken = sandboxesMemoryStats([
      {
        id: "c",
        memoryStats: async () => {
          throw new Error("EACCES");
        },
      },
    ]);
    await expect(broken).rejects.toThrow("EACCES");
  });
});

describe.skipIf(uffdSkip !== undefined)(
  `REMOVE to reclaimed bytes through a real page-fault server${uffdSkip ? ` (skipped: ${uffdSkip})` : ""}`,
  () => {
    it("a peer that frees 16 of its 32 MiB shows the REMOVE and 16 MiB less resident", async () => {
      const dir = mkdtempSync(join(tmpdir(), "sbx-memory-stats-"));
      const fds = readdirSync("/proc/self/fd").length;
      const children = childPids();
      try {
        const size = 32 * MiB;
        const removed = { offset: 8 * MiB, length: 16 * MiB };
        const memoryFile = join(dir, "memory");
        writeTestMemoryFile(memoryFile, size);
        await using server = new PageFaultServer({ socketPath: join(dir, "uffd.sock"), memoryFile });
        await server.listen();
        const peer = spawnTestPeer({
          binary: await buildTestPeer(),
          socketPath: server.socketPath,
          memoryFile,
          size,
          remove: removed,
          // Long enough to read its counters after the REMOVE; the wait below ends as soon as they show it.
          holdMs: 20_000,
        });
        const exited = new Promise((resolve) => peer.once("close", resolve));
        try {
          let stats = sandboxMemoryStats(await readProcessMemory(peer.pid as number), server.metrics(), {
            guestBytes: size,
            balloon: true,
          });
          const deadline = Date.now() + 15_000;
          const expected = removed.length - MiB;
          while (
            (stats.removeEvents === 0 ||
              stats.reclaimedBytes < expected ||
              stats.zeroPages < removed.length / 4096) &&
            Date.now() < deadline
          ) {
            await new Promise((resolve) => setTimeout(resolve, 50));
            stats = sandboxMemoryStats(await readProcessMemory(peer.pid as number), server.metrics(), {
              guestBytes: size,
              balloon: true,
            });
          }
          expect(stats.removeEvents).toBe(1);
          // The range left the peer's resident set; other memory it touched after its peak (stack,
          // stdio, libc) moves the figure by some pages (176 KiB when measured), never by a MiB.
          expect(stats.reclaimedBytes).toBeGreaterThanOrEqual(expected);
          expect(stats.reclaimedBytes).toBeLessThan(removed.length + 2 * MiB);
          // The peer read the removed range back: zeros, served without the memory file.
          expect(stats.zeroPages).toBe(removed.length / 4096);
          // Seen from outside the owner (as sbx doctor sees a state directory): the same reclaim.
          const identity = (await processIdentity(peer.pid as number))!;
          const [recorded] = await recordedSandboxesMemory([recordOf("peer", identity)]);
          expect(recorded!.reclaimedBytes).toBeGreaterThanOrEqual(expected);
        } finally {
          peer.kill("SIGKILL");
          await exited;
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      expect(childPids()).toEqual(children);
      expect(readdirSync("/proc/self/fd").length).toBe(fds);
    }, 60_000);
  },
);
