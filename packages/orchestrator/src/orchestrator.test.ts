// The whole flow with a real Firecracker and the tiny test guest: template build from an OCI image
// (rootfs drive, TAP in a network namespace), sandboxes from it, each in its own network namespace
// with its own copy of the disk, pause to a Diff snapshot and resume, and nothing left behind.
import { readdirSync, readlinkSync, statSync } from "node:fs";
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
import { buildDir, readBuildHeader } from "./builds.ts";
import { NetworkPool } from "./netns-pool.ts";
import { listNetworkNamespaces } from "./network.ts";
import { listHostFirewall } from "./nftables.ts";
import { Orchestrator } from "./orchestrator.ts";
import { createSandbox, type Sandbox } from "./sandbox.ts";
import { diskSlotPath } from "./template-build.ts";
import { BUILD_FILES } from "./template-manifest.ts";
import { childPids, networkSkipReason } from "./test-capabilities.ts";
import { expectChecksumContinues } from "./test-guest-snapshot.ts";
import { type TemplateFixture, templateFixture, testResolver } from "./test-template-fixture.ts";

const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker({ testGuest: true });
const skipReason = firecrackerSkip ?? networkSkipReason();
if (skipReason) console.log(`[orchestrator] template end-to-end test skipped: ${skipReason}`);

const fdCount = () => readdirSync("/proc/self/fd").length;
const GUEST_LINE = /^SBX-GUEST iter=\d+ sum=[0-9a-f]{8}$/;

/** The inode of the file a process has open at `path` (as that process sees the path). */
function openFileInode(pid: number, path: string): number | undefined {
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`) === path) return statSync(`/proc/${pid}/fd/${fd}`).ino;
    } catch {
      // closed while we looked
    }
  }
  return undefined;
}

describe.skipIf(skipReason !== undefined)(
  `orchestrator with Firecracker${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let fixture: TemplateFixture;
    let orchestrator: Orchestrator;
    let before: { fds: number; children: number[]; namespaces: string[] };

    beforeAll(async () => {
      const guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
      fixture = await templateFixture({ firecrackerBin: firecrackerBin as string });
      before = { fds: fdCount(), children: childPids(), namespaces: await listNetworkNamespaces() };
      // Room for the 10 one-vCPU guests below on a 2-core host (the default 4x overcommit allows 8):
      // admission itself is tested in capacity-firecracker.test.ts.
      orchestrator = await Orchestrator.open({ ...fixture.config, vcpuOvercommit: 5 });
      const built = await orchestrator.buildTemplate({
        request: { name: "guest", ociLayout: fixture.layoutDir, memoryMib: 128, vcpuCount: 1 },
        resolver: testResolver(guest, firecrackerBin),
        readyMarker: TEST_GUEST_READY_MARKER,
      });
      expect(built.manifest.network?.tapName).toBe(fixture.config.tapName);
      expect(built.timings.map((t) => t.step)).toContain("snapshot");
    }, 120_000);

    afterAll(async () => {
      await orchestrator?.close();
      if (fixture) await rm(fixture.dir, { recursive: true, force: true });
    });

    it("starts 10 sandboxes at once, each in its own network namespace with its own disk and the right checksum", async () => {
      const settled = await Promise.allSettled(
        Array.from({ length: 10 }, () =>
          // Every running test guest spins a vCPU, so the tenth restore shares 2 cores with nine busy
          // guests (and, in a full run, other packages' tests): a liveness bound, not a speed target.
          orchestrator.createSandbox({ template: "guest", alive: GUEST_LINE, aliveTimeoutMs: 60_000 }),
        ),
      );
      const sandboxes = settled.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
      const failed = settled.flatMap((s) => (s.status === "rejected" ? [s.reason as Error] : []));
      if (failed.length > 0) {
        // The sandboxes that did start must not outlive this test and break the ones after it.
        await Promise.all(sandboxes.map((s) => s.kill()));
        throw new AggregateError(failed, `${failed.length} of 10 creates failed: ${failed[0]!.message}`);
      }
      try {
        const slot = diskSlotPath(fixture.config);
        const seen = new Set<number>();
        const namespaces = new Set<string>();
        for (const sandbox of sandboxes) {
          const pid = sandbox.firecracker.pid;
          // Firecracker opened the snapshot's disk path, and behind it is this sandbox's own copy.
          const inode = openFileInode(pid, slot);
          expect(inode).toBe(statSync(join(sandbox.directory, BUILD_FILES.rootfs)).ino);
          seen.add(inode as number);
          namespaces.add(readlinkSync(`/proc/${pid}/ns/net`));
          expect(sandbox.networkNamespace).toMatch(/^sbx-/);
          // The memory came back byte-exactly: the guest's running checksum is the one it must be.
          const progress = sandbox.firecracker.console
            .lines()
            .map((line) => parseTestGuestLine(line))
            .filter((p) => p !== undefined)
            .at(-1)!;
          expect(progress.checksum).toBe(expectedGuestChecksums(progress.iteration)[progress.iteration - 1]);
        }
        expect(seen.size).toBe(10);
        expect(namespaces.size).toBe(10);
        expect(namespaces.has(readlinkSync("/proc/self/ns/net"))).toBe(false);
        expect(orchestrator.sandboxes).toHaveLength(10);
      } finally {
        // Killing one leaves the others running.
        await sandboxes[0]!.kill();
        expect(orchestrator.sandboxes).toHaveLength(9);
        const since = sandboxes[1]!.firecracker.console.position;
        await sandboxes[1]!.firecracker.waitForConsole(GUEST_LINE, { timeoutMs: 30_000, since });
        await Promise.all(sandboxes.map((s) => s.kill()));
      }
      expect(orchestrator.sandboxes).toHaveLength(0);
    });

    it("pauses into a build with the disk beside it, and resumes where the guest was, checksum exact", async () => {
      let sandbox: Sandbox | undefined = await orchestrator.createSandbox({
        template: "guest",
        alive: GUEST_LINE,
      });
      const lastIteration = () =>
        Math.max(
          ...sandbox!.firecracker.console
            .lines()
            .map((line: string) => parseTestGuestLine(line)?.iteration ?? 0),
        );
      const since = sandbox.firecracker.console.position;
      await sandbox.firecracker.waitForConsole(GUEST_LINE, { timeoutMs: 30_000, since });
      const pausedAt = lastIteration();
      const templateBuild = sandbox.build.id;
      const paused = await sandbox.pause();
      const header = await readBuildHeader(fixture.config, paused.build);
      expect(header.builds).toContain(templateBuild);
      expect(statSync(join(buildDir(fixture.config, paused.build), BUILD_FILES.rootfs)).size).toBeGreaterThan(
        0,
      );
      expect(orchestrator.sandboxes).toHaveLength(0);
      expect((await orchestrator.pausedSandboxes()).map((p) => p.build)).toContain(paused.build);
      sandbox = await orchestrator.createSandbox({ from: paused, alive: GUEST_LINE });
      try {
        // The first progress line past the pause carries the checksum an uninterrupted guest has there.
        await expectChecksumContinues(sandbox.firecracker, pausedAt);
      } finally {
        await sandbox.kill();
      }
      await orchestrator.removePausedSandbox(paused.id);
      const report = await orchestrator.gc();
      expect(report.removed.map((r) => r.id)).toContain(paused.build);
      expect(report.kept.map((k) => k.id)).toContain(templateBuild);
    });

    it("provisions in a first boot that ends in a reset, repairs the rootfs, then snapshots a second boot", async () => {
      const guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
      const events: string[] = [];
      const request = {
        name: "provisioned",
        ociLayout: fixture.layoutDir,
        memoryMib: 128,
        vcpuCount: 1,
        network: false,
        provisionScript: "echo provisioning\n",
      };
      const built = await orchestrator.buildTemplate({
        request,
        resolver: testResolver(guest, firecrackerBin),
        readyMarker: TEST_GUEST_READY_MARKER,
        onEvent: (event) => event.kind === "step-end" && events.push(event.step),
      });
      expect(events.slice(events.indexOf("provision"), events.indexOf("snapshot") + 1)).toEqual([
        "provision",
        "boot",
        "wait-ready",
        "snapshot",
      ]);
      expect(built.manifest.boot!.provisionScriptSha256).toMatch(/^[0-9a-f]{64}$/);
      // A failing provisioning script fails the build with its status; nothing is published.
      const failed = await orchestrator
        .buildTemplate({
          request: {
            ...request,
            name: "provision-fails",
            kernelCommandLine: "console=ttyS0 sbx.test-provision-status=5",
          },
          resolver: testResolver(guest, firecrackerBin),
          readyMarker: TEST_GUEST_READY_MARKER,
        })
        .catch((e: unknown) => e);
      expect(failed).toMatchObject({ code: "STEP_FAILED", details: { step: "provision" } });
      expect((failed as Error).cause).toMatchObject({ code: "PROVISION_FAILED", details: { status: 5 } });
      expect(readdirSync(join(fixture.config.stateDir, "templates")).sort()).toEqual([
        "guest.json",
        "provisioned.json",
      ]);
    }, 120_000);

    it("useMemfd: require refuses a Firecracker that sends no memfd; prefer goes on and counts it", async () => {
      const before = orchestrator.metrics();
      const refused = await orchestrator
        .createSandbox({ template: "guest", alive: GUEST_LINE, useMemfd: "require" })
        .catch((e: unknown) => e);
      expect(refused).toMatchObject({ code: "STEP_FAILED", details: { step: "snapshot-load" } });
      expect((refused as Error).cause).toMatchObject({ code: "MEMFD_MISSING" });
      expect(readdirSync(join(fixture.config.stateDir, "sandboxes"))).toEqual([]);
      await using sandbox = await orchestrator.createSandbox({
        template: "guest",
        alive: GUEST_LINE,
        useMemfd: "prefer",
      });
      expect(sandbox.firecracker.exitStatus).toBeUndefined();
      expect(orchestrator.metrics()).toMatchObject({
        memfdFallbacks: before.memfdFallbacks + 1,
        createFailures: before.createFailures + 1,
        sandboxesCreated: before.sandboxesCreated + 1,
      });
    });

    it("takes a prepared network from a pool, exposes guest ports per clone (and published), removes it all on kill", async () => {
      const table = fixture.config.firewallTable;
      await using pool = new NetworkPool(orchestrator.state, { size: 1 });
      pool.start();
      await pool.filled();
      const pooled = await createSandbox(
        orchestrator.state,
        { template: "guest", alive: GUEST_LINE },
        { networkPool: pool },
      );
      const plain = await orchestrator.createSandbox({ template: "guest", alive: GUEST_LINE });
      try {
        expect(pool.stats.hits).toBe(1);
        const published = await pooled.expose(8080, { publish: true });
        const exposed = await plain.expose(8080);
        // Clones share the guest address; their namespace addresses tell them apart.
        expect(published.host).not.toBe(exposed.host);
        expect(published.hostPort).toBeGreaterThan(0);
        expect(pooled.ports().map((p) => p.guestPort)).toEqual([8080]);
        const firewall = await listHostFirewall(table);
        expect(firewall.published).toContainEqual({
          hostPort: published.hostPort,
          address: published.host,
          port: published.port,
        });
      } finally {
        await pooled.kill();
        await plain.kill();
      }
      const after = await listHostFirewall(table);
      expect(after.published.filter((p) => p.port === 8080)).toEqual([]);
    });

    it("leaves no process, fd, namespace or sandbox directory behind", async () => {
      expect(childPids()).toEqual(before.children);
      // Only new ones count: other packages' tests create and remove namespaces of their own meanwhile.
      const namespaces = await listNetworkNamespaces();
      expect(namespaces.filter((name) => !before.namespaces.includes(name))).toEqual([]);
      expect(readdirSync(join(fixture.config.stateDir, "sandboxes"))).toEqual([]);
      expect(fdCount()).toBe(before.fds);
    });
  },
);
