import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cgroupLimitFiles, removeCgroupDirs } from "./cgroups.ts";
import { removeStaleJails } from "./stale-jails.ts";
import { cgroupChildren, entries, firecrackerPids, until } from "./test-jail-counts.ts";
import { childPids, launcherTempDirs } from "./test-process-counts.ts";
import { realFirecracker } from "./testing/real-firecracker.ts";
import { buildTestGuest } from "./testing/tiny-guest.ts";

const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker({ testGuest: true });
const jailerBin = process.env.JAILER_BIN || undefined;
const jailSkip =
  firecrackerSkip ??
  (jailerBin ? (process.getuid?.() === 0 ? undefined : "the jailer needs root") : "JAILER_BIN not set");
if (firecrackerSkip) console.log(`[fc-client] owner-death tests skipped: ${firecrackerSkip}`);
if (jailSkip && !firecrackerSkip) console.log(`[fc-client] jailed owner-death test skipped: ${jailSkip}`);

const ownerScript = fileURLToPath(new URL("./test-owner-script.ts", import.meta.url));
const nonce = `${process.pid.toString(36)}${Date.now().toString(36).slice(-4)}`;

/** Starts a Node owner that launches the VMs, waits until every guest is up, returns it and their pids. */
async function startOwner(spec: object): Promise<{ kill(): void; exited: Promise<unknown>; pids: number[] }> {
  const owner = spawn(process.execPath, ["--conditions=@sbx/source", ownerScript, JSON.stringify(spec)], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exited = new Promise((resolve) => owner.once("close", resolve));
  let output = "";
  owner.stderr.on("data", (chunk) => {
    output += chunk;
  });
  const pids = await new Promise<number[]>((resolve, reject) => {
    let text = "";
    owner.stdout.on("data", (chunk) => {
      text += chunk;
      const match = /READY ([\d,]+)\n/.exec(text);
      if (match) resolve(match[1]!.split(",").map(Number));
    });
    void exited.then(() => reject(new Error(`the owner exited before its VMs were up:\n${output}`)));
  });
  return { kill: () => owner.kill("SIGKILL"), exited, pids };
}

describe.skipIf(firecrackerSkip !== undefined)(
  `Firecracker dies with its owner${firecrackerSkip ? ` (skipped: ${firecrackerSkip})` : ""}`,
  () => {
    let guestPath: string;
    let children: number[];
    let logDir: string;
    beforeAll(async () => {
      logDir = await mkdtemp(join(tmpdir(), "sbx-od-logs-"));
      guestPath = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
      children = childPids();
    });
    afterAll(async () => {
      if (logDir) await rm(logDir, { recursive: true, force: true });
      if (children) expect(childPids()).toEqual(children);
    });

    it("a SIGKILLed owner of 3 Firecrackers leaves none running", async () => {
      const prefix = `sbx-od-${nonce}-`;
      expect(firecrackerPids(prefix)).toEqual([]);
      const owner = await startOwner({
        binary: firecrackerBin,
        guestPath,
        ids: [1, 2, 3].map((n) => `${prefix}${n}`),
        logDir,
      });
      try {
        expect(firecrackerPids(prefix)).toEqual([...owner.pids].sort((a, b) => a - b));
        expect(owner.pids).toHaveLength(3);
      } finally {
        owner.kill();
        await owner.exited;
      }
      await until(() => firecrackerPids(prefix).length === 0, 10_000);
      expect(firecrackerPids(prefix)).toEqual([]);
      // The dead owner's launcher temp dirs (config file, socket) are left; remove them.
      for (const name of launcherTempDirs(prefix)) await rm(join(tmpdir(), name), { recursive: true });
    });

    it("control: with dieWithOwner false (the launcher before), the VMs outlive their owner", async () => {
      const prefix = `sbx-od-${nonce}-c`;
      const owner = await startOwner({
        binary: firecrackerBin,
        guestPath,
        ids: [`${prefix}1`],
        logDir,
        dieWithOwner: false,
      });
      owner.kill();
      await owner.exited;
      try {
        await until(() => firecrackerPids(prefix).length === 0, 1000);
        expect(firecrackerPids(prefix)).toEqual(owner.pids);
      } finally {
        for (const pid of owner.pids) process.kill(pid, "SIGKILL");
        await until(() => firecrackerPids(prefix).length === 0, 10_000);
        for (const name of launcherTempDirs(prefix)) await rm(join(tmpdir(), name), { recursive: true });
      }
    });

    it.skipIf(jailSkip !== undefined)(
      `jailed: the owner's death kills its 3 VMs' pid namespaces; removeStaleJails then removes chroots and cgroups${jailSkip ? ` (skipped: ${jailSkip})` : ""}`,
      async () => {
        const base = await mkdtemp(join(tmpdir(), "sbx-jod-"));
        const parentCgroup = `sbx-test-${nonce}`;
        const prefix = `sbx-jod-${nonce}-`;
        let owner: Awaited<ReturnType<typeof startOwner>> | undefined;
        try {
          owner = await startOwner({
            binary: firecrackerBin,
            guestPath,
            ids: [1, 2, 3].map((n) => `${prefix}${n}`),
            logDir: base,
            jail: {
              jailerBinary: jailerBin,
              uid: 64_123,
              gid: 64_123,
              chrootBaseDir: base,
              parentCgroup,
              cgroupVersion: 1,
              cgroups: cgroupLimitFiles({ cpus: 0.5, memoryBytes: 512 * 1024 * 1024, pids: 64 }, 1),
            },
          });
          expect(owner.pids).toHaveLength(3);
          expect(firecrackerPids(prefix)).toEqual([...owner.pids].sort((a, b) => a - b));
          expect(entries(join(base, "firecracker"))).toEqual([1, 2, 3].map((n) => `${prefix}${n}`));
          expect(cgroupChildren(parentCgroup)).toEqual(
            ["cpu", "memory", "pids"].flatMap((controller) =>
              [1, 2, 3].map((n) => join("/sys/fs/cgroup", controller, parentCgroup, `${prefix}${n}`)),
            ),
          );
          const cpuDir = join("/sys/fs/cgroup/cpu", parentCgroup, `${prefix}1`);
          expect(readFileSync(join(cpuDir, "cpu.cfs_quota_us"), "utf8").trim()).toBe("50000");
          owner.kill();
          await owner.exited;
          await until(() => firecrackerPids(prefix).length === 0, 10_000);
          expect(firecrackerPids(prefix)).toEqual([]);

          const swept = await removeStaleJails({
            firecrackerBinary: firecrackerBin!,
            chrootBaseDir: base,
            parentCgroup,
            idPrefix: prefix,
          });
          expect(swept.removed).toEqual([1, 2, 3].map((n) => `${prefix}${n}`));
          expect(swept.running).toEqual([]);
          expect(swept.leftCgroups).toEqual([]);
          expect(entries(join(base, "firecracker"))).toEqual([]);
          expect(cgroupChildren(parentCgroup)).toEqual([]);
        } finally {
          owner?.kill();
          await owner?.exited;
          await until(() => firecrackerPids(prefix).length === 0, 10_000);
          await rm(base, { recursive: true, force: true });
          // The shared parent cgroup is kept by design; this test's own is removed, with anything a failure left.
          await removeCgroupDirs(cgroupChildren(parentCgroup));
          await removeCgroupDirs(
            entries("/sys/fs/cgroup").map((h) => join("/sys/fs/cgroup", h, parentCgroup)),
          );
        }
      },
    );
  },
);
