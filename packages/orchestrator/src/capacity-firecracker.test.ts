// Overload with a real Firecracker and the busy test guest (every running guest spins one vCPU): a
// burst larger than the host ends with each create either running (alive, checksum right) or refused
// with CAPACITY_EXCEEDED, never failing inside the VM start; the memory limit refuses before any
// Firecracker starts. Takes about 45 s on a 2-core host (most of it queue timeouts).
import { readdirSync, readFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  buildTestGuest,
  expectedGuestChecksums,
  parseTestGuestLine,
  realFirecracker,
  TEST_GUEST_READY_MARKER,
} from "@sbx/fc-client/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createConfig, type OrchestratorOptions } from "./config.ts";
import { OrchestratorError } from "./errors.ts";
import { jailLayout } from "./jail-plan.ts";
import { Orchestrator } from "./orchestrator.ts";
import type { Sandbox } from "./sandbox.ts";
import { childPids } from "./test-capabilities.ts";
import { testLaunchOptions } from "./test-launch-mode.ts";
import { type TemplateFixture, templateFixture, testResolver } from "./test-template-fixture.ts";

const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker({ testGuest: true });
const skipReason =
  firecrackerSkip ?? (process.getuid?.() === 0 ? undefined : "needs root for the VMs' mount namespaces");
if (skipReason) console.log(`[orchestrator] capacity test with Firecracker skipped: ${skipReason}`);

const GUEST_LINE = /^SBX-GUEST iter=\d+ sum=[0-9a-f]{8}$/;
const fdCount = () => readdirSync("/proc/self/fd").length;

/**
 * Firecracker processes running for this test's state directory: unjailed, its paths are on their
 * command line; jailed, they see only chroot paths, and their cgroup names the state directory.
 */
function firecrackerPids(
  marker: string,
  cgroup = jailLayout({
    stateDir: join(marker, "state"),
    jailParentCgroup: "sbx",
    jailChrootBaseDir: undefined,
  }).parentCgroup,
): number[] {
  return readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        return (
          readFileSync(`/proc/${pid}/comm`, "utf8").trim() === "firecracker" &&
          (readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(marker) ||
            readFileSync(`/proc/${pid}/cgroup`, "utf8").includes(`/${cgroup}/`))
        );
      } catch {
        return false;
      }
    })
    .map(Number);
}

function expectRunningExactly(sandbox: Sandbox): void {
  const progress = sandbox.firecracker.console
    .lines()
    .map((line) => parseTestGuestLine(line))
    .filter((p) => p !== undefined)
    .at(-1);
  expect(progress).toBeDefined();
  expect(progress!.checksum).toBe(expectedGuestChecksums(progress!.iteration)[progress!.iteration - 1]);
}

/** Every outcome is a running sandbox or a typed capacity refusal; anything else fails the test. */
function sortOutcomes(settled: PromiseSettledResult<Sandbox>[]) {
  const created = settled.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
  const errors = settled.flatMap((s) => (s.status === "rejected" ? [s.reason as Error] : []));
  const refused = errors.filter((e) => e instanceof OrchestratorError && e.code === "CAPACITY_EXCEEDED");
  const other = errors.filter((e) => !refused.includes(e));
  return { created, refused: refused as OrchestratorError[], other };
}

describe.skipIf(skipReason !== undefined)(
  `admission with Firecracker${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let fixture: TemplateFixture;
    let guest: string;
    let before: { fds: number; children: number[] };

    /** An orchestrator on the fixture's state directory with default settings plus `options`. */
    async function open(options: OrchestratorOptions = {}): Promise<Orchestrator> {
      return Orchestrator.open(
        createConfig({
          stateDir: fixture.config.stateDir,
          busyboxDir: fixture.config.busyboxDir,
          firecrackerBin: firecrackerBin as string,
          ...testLaunchOptions(),
          ...options,
        }),
      );
    }

    beforeAll(async () => {
      guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
      fixture = await templateFixture({ firecrackerBin: firecrackerBin as string });
      before = { fds: fdCount(), children: childPids() };
      await using orchestrator = await open();
      await orchestrator.buildTemplate({
        // No NIC: this is about CPU and memory, and namespaces would only slow every create down.
        request: { name: "busy", ociLayout: fixture.layoutDir, memoryMib: 128, vcpuCount: 1, network: false },
        resolver: testResolver(guest, firecrackerBin),
        readyMarker: TEST_GUEST_READY_MARKER,
      });
    }, 120_000);

    afterAll(async () => {
      if (fixture) await rm(fixture.dir, { recursive: true, force: true });
      if (before) {
        expect(childPids()).toEqual(before.children);
        expect(fdCount()).toBe(before.fds);
      }
    });

    it("16 creates at once with default settings: each runs with the right checksum or is refused in the queue", async () => {
      await using orchestrator = await open({ admissionTimeoutMs: 15_000 });
      const { capacity } = orchestrator.metrics();
      // 2 host vCPUs x 4: a burst of 16 busy guests is twice what fits.
      expect(capacity.capacity.vcpus).toBeLessThan(16);
      const settled = await Promise.allSettled(
        Array.from({ length: 16 }, () => orchestrator.createSandbox({ template: "busy", alive: GUEST_LINE })),
      );
      const { created, refused, other } = sortOutcomes(settled);
      try {
        expect(other.map((e) => e.message)).toEqual([]);
        expect(created.length).toBe(Math.min(16, capacity.capacity.vcpus));
        for (const sandbox of created) expectRunningExactly(sandbox);
        for (const error of refused)
          expect(error.details).toMatchObject({ reason: "queue-timeout", short: ["vcpus"] });
        expect(orchestrator.metrics().capacity).toMatchObject({
          committed: { vcpus: created.length, sandboxes: created.length },
          queue: { length: 0 },
          timedOut: refused.length,
        });
      } finally {
        await Promise.all(created.map((s) => s.kill()));
      }
      expect(orchestrator.metrics().capacity.committed).toEqual({ vcpus: 0, memoryBytes: 0, sandboxes: 0 });
      expect(firecrackerPids(fixture.dir)).toEqual([]);
    }, 180_000);

    it("32 creates with a queue timeout: kills make room, the queued creates behind them run, the rest are refused", async () => {
      // The queued creates must outwait the first batch coming alive: 8 busy guests on a loaded 2-core
      // host took 8-11 s (jailed ones 0.3-0.5 s more), so 10 s refused the ones the kills made room for.
      await using orchestrator = await open({ admissionTimeoutMs: 20_000 });
      const fits = orchestrator.metrics().capacity.capacity.vcpus;
      const killed: Sandbox[] = [];
      let createdSoFar = 0;
      const settled = await Promise.allSettled(
        Array.from({ length: 32 }, () =>
          orchestrator.createSandbox({ template: "busy", alive: GUEST_LINE }).then(async (sandbox) => {
            createdSoFar += 1;
            // Once the host is full, the first 4 go: 4 queued creates get their turn.
            if (createdSoFar === fits) {
              const going = orchestrator.sandboxes.slice(0, 4);
              killed.push(...going);
              await Promise.all(going.map((s) => s.kill()));
            }
            return sandbox;
          }),
        ),
      );
      const { created, refused, other } = sortOutcomes(settled);
      try {
        expect(other.map((e) => e.message)).toEqual([]);
        expect(killed).toHaveLength(4);
        expect(created.length).toBe(fits + 4);
        expect(refused).toHaveLength(32 - created.length);
        for (const sandbox of created.filter((s) => !killed.includes(s))) expectRunningExactly(sandbox);
        const { capacity } = orchestrator.metrics();
        expect(capacity.committed.vcpus).toBe(fits);
        expect(capacity.waitMsP99).toBeGreaterThan(0);
      } finally {
        await Promise.all(created.map((s) => s.kill()));
      }
      expect(firecrackerPids(fixture.dir)).toEqual([]);
    }, 300_000);

    it("time in the queue does not count against the alive timeout", async () => {
      await using orchestrator = await open({ hostVcpus: 1, vcpuOvercommit: 1, admissionTimeoutMs: 60_000 });
      const first = await orchestrator.createSandbox({ template: "busy", alive: GUEST_LINE });
      let second: Sandbox | Error | undefined;
      const waiting = orchestrator
        .createSandbox({ template: "busy", alive: GUEST_LINE, aliveTimeoutMs: 5_000 })
        .then(
          (sandbox) => {
            second = sandbox;
          },
          (error: Error) => {
            second = error;
          },
        );
      // Queued for longer than its whole alive timeout.
      await new Promise((resolve) => setTimeout(resolve, 6_000));
      expect(second).toBeUndefined();
      expect(orchestrator.metrics().capacity.queue.length).toBe(1);
      await first.kill();
      await waiting;
      expect(second).not.toBeInstanceOf(Error);
      try {
        expectRunningExactly(second as Sandbox);
      } finally {
        await (second as Sandbox).kill();
      }
    }, 60_000);

    it("the memory limit refuses a create that would exceed it before any Firecracker starts", async () => {
      // Room for two 128 MiB guests, not three.
      await using orchestrator = await open({
        admission: "reject",
        hostMemoryMib: 300,
        reservedMemoryMib: 0,
      });
      const running = [
        await orchestrator.createSandbox({ template: "busy", alive: GUEST_LINE }),
        await orchestrator.createSandbox({ template: "busy", alive: GUEST_LINE }),
      ];
      try {
        const firecrackers = firecrackerPids(fixture.dir);
        expect(firecrackers).toHaveLength(2);
        const steps: string[] = [];
        const error = await orchestrator
          .createSandbox({
            template: "busy",
            onEvent: (event) => {
              if (event.kind === "step-start") steps.push(event.step);
            },
          })
          .then(
            () => undefined,
            (e: unknown) => e as OrchestratorError,
          );
        expect(error?.code).toBe("CAPACITY_EXCEEDED");
        expect(error?.details).toMatchObject({ reason: "full", short: ["memoryBytes"] });
        expect(error?.message).toMatch(/memory: needs 128 MiB, 44 MiB of 300 MiB free/);
        expect(steps).toEqual([]);
        expect(firecrackerPids(fixture.dir)).toEqual(firecrackers);
      } finally {
        await Promise.all(running.map((s) => s.kill()));
      }
      expect(firecrackerPids(fixture.dir)).toEqual([]);
    }, 120_000);
  },
);
