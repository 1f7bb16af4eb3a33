// Every Firecracker the orchestrator starts runs under the real jailer: a template built from an image
// (provisioning-free boot, Full snapshot, working-set recording), sandboxes created, paused, resumed and
// forked from it, each as its own uid in its own chroot, cgroup and pid namespace, the guest's checksums
// right throughout; and kill leaves no chroot, cgroup, process or uid behind.
import { existsSync, readFileSync, readlinkSync, statSync } from "node:fs";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildTestGuest, realFirecracker, TEST_GUEST_READY_MARKER } from "@sbx/fc-client/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { artifactResolverWith } from "./boot-parameters.ts";
import { buildDir } from "./builds.ts";
import { jailLayout } from "./jail-plan.ts";
import { type OrchestratorState, openOrchestratorState } from "./orchestrator-state.ts";
import { createSandbox, type Sandbox } from "./sandbox.ts";
import { buildTemplate } from "./template-build.ts";
import { BUILD_FILES } from "./template-manifest.ts";
import { childPids, entries, openFdCount, processesInNamespace } from "./test-capabilities.ts";
import { expectChecksumContinues, GUEST_LINE, lastIteration } from "./test-guest-snapshot.ts";
import { type TemplateFixture, templateFixture } from "./test-template-fixture.ts";

const fc = realFirecracker({ testGuest: true });
const skipReason = fc.skipReason ?? fc.jailerSkipReason;
if (skipReason) console.log(`[orchestrator] jailed sandbox tests skipped: ${skipReason}`);

const MIB = 1024 * 1024;
const ALIVE = { alive: GUEST_LINE, aliveTimeoutMs: 60_000 } as const;

/** `Uid:`/`Gid:` of /proc/<pid>/status: real, effective, saved, filesystem. */
function credentials(pid: number): { uid: number[]; gid: number[] } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string) =>
    (new RegExp(`^${name}:\\s+(.*)$`, "m").exec(status)?.[1] ?? "").split(/\s+/).map(Number);
  return { uid: field("Uid"), gid: field("Gid") };
}

/** The per-VM cgroups left under this state's parent, in every hierarchy. */
function vmCgroups(parent: string): string[] {
  return entries("/sys/fs/cgroup").flatMap((hierarchy) =>
    entries(join("/sys/fs/cgroup", hierarchy, parent))
      .map((name) => join("/sys/fs/cgroup", hierarchy, parent, name))
      .filter((path) => statSync(path).isDirectory()),
  );
}

async function expectJailed(state: OrchestratorState, sandbox: Sandbox) {
  const record = await state.stateDir.readRecord(sandbox.id);
  const jail = record.jail!;
  expect(jail.uid).toBeGreaterThanOrEqual(200_000);
  expect(jail.gid).toBe(jail.uid);
  const pid = sandbox.firecracker.pid;
  expect(credentials(pid)).toEqual({ uid: Array(4).fill(jail.uid), gid: Array(4).fill(jail.gid) });
  // The process's root is its chroot: the jailer's copy of Firecracker there is the file it runs.
  const chroot = join(jail.directory, "root");
  expect(statSync(`/proc/${pid}/root/firecracker`).ino).toBe(statSync(join(chroot, "firecracker")).ino);
  expect(entries(`/proc/${pid}/root`)).toEqual(entries(chroot));
  // Its own pid namespace.
  const ns = readlinkSync(`/proc/${pid}/ns/pid`);
  expect(ns).not.toBe(readlinkSync("/proc/self/ns/pid"));
  // The page-fault server listened inside the chroot (its socket goes once the one peer connected) and
  // served exactly this pid.
  expect(sandbox.server.socketPath).toBe(join(chroot, "uffd.sock"));
  expect((await sandbox.server.ready).peerPid).toBe(pid);
  // The agent's vsock socket, made in the chroot, is reachable from the sandbox directory too.
  expect(statSync(join(sandbox.directory, "vsock.sock")).ino).toBe(statSync(join(chroot, "vsock.sock")).ino);
  return { record, jail, chroot, ns };
}

describe.skipIf(skipReason !== undefined)(
  `jailed by default${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let fixture: TemplateFixture;
    let state: OrchestratorState;
    let guest: string;
    let before: { fds: number; children: number[] };

    beforeAll(async () => {
      guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
      fixture = await templateFixture({ firecrackerBin: fc.binary! });
      before = { fds: openFdCount(), children: childPids() };
      expect(fixture.config.jailerBin).toBe(fc.jailer);
      state = await openOrchestratorState(fixture.config);
    }, 60_000);

    afterAll(async () => {
      await state?.close();
      // The state's own parent cgroup goes with it once its VMs' cgroups are gone.
      if (state) {
        const { parentCgroup } = jailLayout(state.config);
        for (const hierarchy of entries("/sys/fs/cgroup"))
          expect(existsSync(join("/sys/fs/cgroup", hierarchy, parentCgroup))).toBe(false);
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
      if (before) {
        expect(childPids()).toEqual(before.children);
        expect(openFdCount()).toBe(before.fds);
      }
      if (fixture) await rm(fixture.dir, { recursive: true, force: true });
    });

    it("template build, create, pause, resume and fork run jailed: own uid, chroot, cgroup limits, pid namespace; kill leaves nothing", async () => {
      const layout = jailLayout(state.config);
      const built = await buildTemplate(state, {
        request: {
          name: "jailed",
          ociLayout: fixture.layoutDir,
          network: false,
          memoryMib: 128,
          vcpuCount: 1,
        },
        resolver: artifactResolverWith({ kernel: guest, firecracker: fc.binary! }),
        readyMarker: TEST_GUEST_READY_MARKER,
      });
      expect(built.manifest.jailed).toBe(true);
      expect(built.manifest.files[BUILD_FILES.workingSet]).toBeDefined();
      for (const name of [BUILD_FILES.vmstate, BUILD_FILES.memory, BUILD_FILES.rootfs])
        expect(statSync(join(built.directory, name)).uid).toBe(0);
      // The build's VMs (boot, working-set recording) are gone with their jails.
      expect(entries(join(layout.chrootBaseDir, "firecracker"))).toEqual([]);
      expect(state.uidPool.inUse).toBe(0);

      const sandbox = await createSandbox(state, { template: "jailed", ...ALIVE, limits: { pids: 40 } });
      const sandboxes: Sandbox[] = [sandbox];
      const namespaces: string[] = [];
      try {
        const { jail, ns } = await expectJailed(state, sandbox);
        namespaces.push(ns);
        // Limits from the template (1 vCPU, 128 MiB + overhead) and the create (pids).
        expect(jail.cgroups.length).toBe(state.config.jailCgroupVersion === 2 ? 1 : 3);
        const read = (controller: string, file: string) =>
          readFileSync(join(jail.cgroups.find((d) => d.includes(`/${controller}`))!, file), "utf8").trim();
        expect(read("memory", "memory.limit_in_bytes")).toBe(String(256 * MIB));
        expect(read("pids", "pids.max")).toBe("40");
        expect(read("cpu", "cpu.cfs_quota_us")).toBe("100000");
        const firecrackerPid = sandbox.firecracker.pid;
        expect(
          readFileSync(join(jail.cgroups.find((d) => d.includes("/pids"))!, "cgroup.procs"), "utf8"),
        ).toContain(String(firecrackerPid));
        await expectChecksumContinues(sandbox.firecracker, 1);

        const pausedAt = lastIteration(sandbox.firecracker);
        const paused = await sandbox.pause();
        const pausedDir = buildDir(state.config, paused.build);
        expect(JSON.parse(readFileSync(join(pausedDir, BUILD_FILES.manifest), "utf8")).jailed).toBe(true);
        expect(statSync(join(pausedDir, BUILD_FILES.vmstate)).uid).toBe(0);
        expect(statSync(join(pausedDir, BUILD_FILES.memory)).uid).toBe(0);
        expect(entries(jail.directory)).toEqual([]);

        const resumed = await createSandbox(state, { from: paused, ...ALIVE });
        sandboxes.push(resumed);
        namespaces.push((await expectJailed(state, resumed)).ns);
        await expectChecksumContinues(resumed.firecracker, pausedAt);

        const forks = await resumed.fork(2, ALIVE);
        sandboxes.push(...forks);
        const uids = new Set<number>();
        for (const fork of forks) {
          const jailed = await expectJailed(state, fork);
          uids.add(jailed.jail.uid);
          namespaces.push(jailed.ns);
          await expectChecksumContinues(fork.firecracker, pausedAt);
        }
        uids.add((await state.stateDir.readRecord(resumed.id)).jail!.uid);
        expect(uids.size).toBe(3);
        // The parent ran on through its own fork's pause.
        await expectChecksumContinues(resumed.firecracker, lastIteration(resumed.firecracker));
      } finally {
        await Promise.all(sandboxes.map((s) => s.kill()));
      }
      // The three that ran at once had three (the first one's, gone with its pause, may be reused).
      expect(new Set(namespaces.slice(1)).size).toBe(3);
      for (const ns of namespaces) expect(processesInNamespace(ns)).toEqual([]);
      expect(entries(join(layout.chrootBaseDir, "firecracker"))).toEqual([]);
      expect(vmCgroups(layout.parentCgroup)).toEqual([]);
      expect(state.uidPool.inUse).toBe(0);
      expect(entries(join(state.config.stateDir, "sandboxes"))).toEqual([]);
    }, 300_000);
  },
);
