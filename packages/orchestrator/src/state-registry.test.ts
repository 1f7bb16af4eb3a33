import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, rmdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readCgroupMounts } from "@sbx/fc-client";
import { afterAll, describe, expect, it } from "vitest";
import { JAIL_CGROUP_CONTROLLERS, stateKey } from "./jail-plan.ts";
import {
  registerStateDirectory,
  sweepDeletedStateDirectories,
  unregisterStateDirectory,
} from "./state-registry.ts";
import { childPids } from "./test-capabilities.ts";

const work = await mkdtemp(join(tmpdir(), "sbx-state-registry-"));
const registry = join(work, "registry");
afterAll(() => rm(work, { recursive: true, force: true }));

const settings = (name: string, extra: { jailChrootBaseDir?: string } = {}) => ({
  stateDir: join(work, name),
  jailChrootBaseDir: extra.jailChrootBaseDir,
  jailParentCgroup: `sbxtest${process.pid}`,
});

describe("the state registry", () => {
  it("records a state directory under its key and forgets it", async () => {
    const config = settings("a");
    await registerStateDirectory(config, registry);
    const file = join(registry, `${stateKey(config.stateDir)}.json`);
    expect(JSON.parse(await readFile(file, "utf8"))).toEqual({
      version: 1,
      stateDir: config.stateDir,
      jailParentCgroup: config.jailParentCgroup,
    });
    await unregisterStateDirectory(config, registry);
    expect(existsSync(file)).toBe(false);
    await unregisterStateDirectory(config, registry); // already gone: no error
  });

  it("ignores records it did not write, and a state directory that still exists", async () => {
    const live = settings("live");
    await mkdir(live.stateDir, { recursive: true });
    await registerStateDirectory(live, registry);
    const gone = join(work, "gone");
    const forged = [
      ["not json", "{"],
      ["an escaping parent cgroup", { version: 1, stateDir: gone, jailParentCgroup: "../../x" }],
      ["an extra field", { version: 1, stateDir: gone, jailParentCgroup: "sbx", rm: "/" }],
      [
        "a relative chroot base",
        { version: 1, stateDir: gone, jailParentCgroup: "sbx", jailChrootBaseDir: "x" },
      ],
    ] as const;
    for (const [, content] of forged) {
      await writeFile(
        join(registry, `${stateKey(gone)}.json`),
        typeof content === "string" ? content : JSON.stringify(content),
      );
      expect(await sweepDeletedStateDirectories(settings("me"), { registry })).toEqual([]);
    }
    // A valid record under another directory's key.
    await writeFile(
      join(registry, `${stateKey(join(work, "other"))}.json`),
      JSON.stringify({ version: 1, stateDir: gone, jailParentCgroup: "sbx" }),
    );
    expect(await sweepDeletedStateDirectories(settings("me"), { registry })).toEqual([]);
    expect((await readdir(registry)).sort()).toContain(`${stateKey(live.stateDir)}.json`);
    await rm(registry, { recursive: true, force: true });
  });
});

const cgroupSkip = process.getuid?.() !== 0 ? "needs root to make cgroups" : undefined;

describe.skipIf(cgroupSkip)(
  `a state directory deleted after a crash${cgroupSkip ? ` (skipped: ${cgroupSkip})` : ""}`,
  () => {
    it("loses its idle jails' cgroups and chroots to the next start; a busy one stays until it is idle", async () => {
      const children = childPids();
      const chroots = join(work, "chroots");
      const crashed = settings("crashed", { jailChrootBaseDir: chroots });
      const other = settings("other-live");
      await mkdir(crashed.stateDir, { recursive: true });
      await mkdir(other.stateDir, { recursive: true });
      const mounts = (await readCgroupMounts()).filter((mount) => mount.version === 1);
      expect(mounts.length).toBeGreaterThan(0);
      const group = (config: { stateDir: string; jailParentCgroup: string }, mount: { path: string }) =>
        join(mount.path, config.jailParentCgroup, stateKey(config.stateDir));
      const made: string[] = [];
      const jailControllers = new Set<string>(JAIL_CGROUP_CONTROLLERS);
      const sleeper = spawn("sleep", ["60"], { stdio: "ignore" });
      const sleeperExited = new Promise((resolve) => sleeper.once("exit", resolve));
      try {
        for (const mount of mounts) {
          for (const dir of [
            join(group(crashed, mount), "idle-vm"),
            join(group(crashed, mount), "busy-vm"),
            join(group(other, mount), "its-vm"),
          ]) {
            await mkdir(dir, { recursive: true });
            made.push(dir);
          }
        }
        for (const id of ["idle-vm", "busy-vm", "not-a-cgroup-id"]) {
          await mkdir(join(chroots, "firecracker", id, "root"), { recursive: true });
        }
        // A process in the busy VM's cgroups: what a still-running Firecracker looks like. (cpuset takes
        // no task until its cpus and mems are set; the jailer does not use it.)
        for (const mount of mounts.filter((m) => m.controllers.some((c) => jailControllers.has(c)))) {
          await writeFile(join(group(crashed, mount), "busy-vm", "cgroup.procs"), String(sleeper.pid));
        }
        await registerStateDirectory(crashed, registry);
        await registerStateDirectory(other, registry);
        await rm(crashed.stateDir, { recursive: true });

        const first = await sweepDeletedStateDirectories(settings("me"), { registry });
        expect(first).toEqual([
          {
            stateDir: crashed.stateDir,
            jails: { removed: ["idle-vm"], running: ["busy-vm"], leftCgroups: [] },
            forgotten: false,
          },
        ]);
        for (const mount of mounts) {
          expect(existsSync(join(group(crashed, mount), "idle-vm"))).toBe(false);
          expect(existsSync(join(group(crashed, mount), "busy-vm"))).toBe(true);
          expect(existsSync(join(group(other, mount), "its-vm"))).toBe(true);
        }
        expect((await readdir(join(chroots, "firecracker"))).sort()).toEqual(["busy-vm", "not-a-cgroup-id"]);
        expect(existsSync(join(registry, `${stateKey(crashed.stateDir)}.json`))).toBe(true);

        sleeper.kill("SIGKILL");
        await sleeperExited;
        const second = await sweepDeletedStateDirectories(settings("me"), { registry });
        expect(second).toEqual([
          {
            stateDir: crashed.stateDir,
            jails: { removed: ["busy-vm"], running: [], leftCgroups: [] },
            forgotten: true,
          },
        ]);
        for (const mount of mounts) expect(existsSync(group(crashed, mount))).toBe(false);
        expect(await readdir(join(chroots, "firecracker"))).toEqual(["not-a-cgroup-id"]);
        expect(await readdir(registry)).toEqual([`${stateKey(other.stateDir)}.json`]);
        expect(await sweepDeletedStateDirectories(settings("me"), { registry })).toEqual([]);
      } finally {
        sleeper.kill("SIGKILL");
        await sleeperExited;
        for (const dir of made.reverse()) await rmdir(dir).catch(() => undefined);
        for (const mount of mounts) {
          for (const config of [crashed, other]) {
            await rmdir(group(config, mount)).catch(() => undefined);
            await rmdir(join(mount.path, config.jailParentCgroup)).catch(() => undefined);
          }
        }
      }
      for (const mount of mounts) expect(existsSync(join(mount.path, crashed.jailParentCgroup))).toBe(false);
      expect(childPids()).toEqual(children);
    });
  },
);
