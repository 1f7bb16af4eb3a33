// How VMs are started: jailed by default, a typed refusal naming both ways out when there is no jailer,
// the jailer found like Firecracker (JAILER_BIN, or the artifact root, arch- and checksum-checked), the
// explicit opt-out warned at every start, and stale jails swept when a state directory is opened.
import { createHash } from "node:crypto";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  writeFileSync,
} from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostArch, silentLogger } from "@sbx/arch";
import { readCgroupMounts } from "@sbx/fc-client";
import { realFirecracker } from "@sbx/fc-client/testing";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { configFromEnv, createConfig } from "./config.ts";
import { importBuild } from "./import-build.ts";
import { jailLayout, launchModeFor, resolveJailerBinary } from "./jail-plan.ts";
import { Orchestrator } from "./orchestrator.ts";
import { openOrchestratorState } from "./orchestrator-state.ts";
import { createSandbox } from "./sandbox.ts";
import { launchVm } from "./vm-launch.ts";

const isRoot = process.getuid?.() === 0;
const fc = realFirecracker();
const mounts = await readCgroupMounts().catch(() => []);
const v2 = mounts.find((m) => m.version === 2);
const hybridCgroups =
  isRoot &&
  mounts.some((m) => m.version === 1) &&
  !["cpu", "memory", "pids"].every((c) => v2?.controllers.includes(c));

/** A minimal ELF header of another machine (aarch64 on x86_64 hosts and the other way round). */
function foreignElf(path: string): void {
  const header = Buffer.alloc(64);
  header.write("\x7fELF", 0, "latin1");
  header[4] = 2; // 64-bit
  header[5] = 1; // little-endian
  header[6] = 1;
  header.writeUInt16LE(2, 16); // ET_EXEC
  header.writeUInt16LE(hostArch() === "amd64" ? 183 : 62, 18); // EM_AARCH64 / EM_X86_64
  header.writeUInt32LE(1, 20);
  writeFileSync(path, header, { mode: 0o755 });
}

describe("launch mode", () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), "sbx-jail-plan-"));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it("reads SBX_UNJAILED and the jail settings from the environment, and names each bad value", () => {
    const config = configFromEnv({ SBX_UNJAILED: "1", SBX_STATE_DIR: "/var/lib/x" });
    expect(config).toMatchObject({
      unjailed: true,
      jailUidRange: "200000-299999",
      jailParentCgroup: "sbx",
      jailChrootBaseDir: undefined,
      jailCgroupVersion: undefined,
    });
    expect(configFromEnv({}).unjailed).toBe(false);
    expect(jailLayout(config).chrootBaseDir).toBe("/var/lib/x/jail");
    expect(jailLayout(config).parentCgroup).toMatch(/^sbx\/[0-9a-f]{12}$/);
    const error = (() => {
      try {
        configFromEnv({
          SBX_JAIL_UID_RANGE: "0-100",
          SBX_JAIL_CGROUP_VERSION: "3",
          SBX_JAIL_PARENT_CGROUP: "../up",
          SBX_UNJAILED: "maybe",
        });
      } catch (e) {
        return e as Error;
      }
    })();
    expect(error).toMatchObject({ code: "CONFIG_INVALID" });
    for (const variable of [
      "SBX_JAIL_UID_RANGE",
      "SBX_JAIL_CGROUP_VERSION",
      "SBX_JAIL_PARENT_CGROUP",
      "SBX_UNJAILED",
    ])
      expect(error?.message).toContain(variable);
  });

  it("no jailer and no opt-out: NOT_AVAILABLE naming JAILER_BIN and SBX_UNJAILED, before anything of a sandbox exists", async () => {
    const config = createConfig({
      stateDir: join(root, "state"),
      firecrackerRoot: join(root, "no-firecracker"),
      firecrackerBin: "/bin/true",
    });
    await using state = await openOrchestratorState(config);
    const refusal = await launchModeFor(state).catch((e: unknown) => e);
    expect(refusal).toMatchObject({ code: "NOT_AVAILABLE" });
    expect((refusal as Error).message).toMatch(/JAILER_BIN/);
    expect((refusal as Error).message).toMatch(/SBX_UNJAILED=1/);
    writeFileSync(join(root, "vmstate"), "vmstate");
    writeFileSync(join(root, "mem"), Buffer.alloc(64 * 1024));
    await importBuild(state, { template: "t", vmstate: join(root, "vmstate"), memory: join(root, "mem") });
    const error = await createSandbox(state, { template: "t" }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "NOT_AVAILABLE" });
    expect(readdirSync(join(config.stateDir, "sandboxes"))).toEqual([]);
    expect(state.uidPool.inUse).toBe(0);
    // `sbx serve` (checkArtifacts) refuses to start, before it takes the state directory's lock.
    const resolver = { resolve: async () => ({}) as never };
    const served = await Orchestrator.open(
      createConfig({ ...config, cpuTemplate: undefined, stateDir: join(root, "served") }),
      {
        checkArtifacts: true,
        resolver,
      },
    ).catch((e: unknown) => e);
    expect(served).toMatchObject({ code: "NOT_AVAILABLE" });
    expect(existsSync(join(root, "served", "orchestrator.lock"))).toBe(false);
    // The opt-out is explicit and enough.
    const unjailed = createConfig({ ...config, cpuTemplate: undefined, unjailed: true });
    expect(await launchModeFor({ config: unjailed })).toEqual({ jailed: false });
  });

  it("finds the jailer like Firecracker: the artifact root with its sidecar checksum, JAILER_BIN arch-checked", async () => {
    const firecrackerRoot = join(root, "firecracker");
    const dir = join(firecrackerRoot, "v1.14.2", hostArch());
    mkdirSync(dir, { recursive: true });
    const jailer = join(dir, "jailer");
    copyFileSync("/bin/true", jailer);
    const sha256 = createHash("sha256").update(readFileSync(jailer)).digest("hex");
    const base = {
      firecrackerRoot,
      firecrackerVersion: "v1.14.2",
      targetArch: hostArch(),
      jailerBin: undefined,
    };
    expect((await resolveJailerBinary(base))?.path).toBe(jailer);
    writeFileSync(`${jailer}.sha256`, `${sha256}  jailer\n`);
    expect(await resolveJailerBinary(base)).toEqual({ path: jailer, sha256 });
    writeFileSync(`${jailer}.sha256`, `${"0".repeat(64)}  jailer\n`);
    await expect(resolveJailerBinary(base)).rejects.toMatchObject({ code: "ARTIFACT_INVALID" });
    const foreign = join(root, "foreign-jailer");
    foreignElf(foreign);
    await expect(resolveJailerBinary({ ...base, jailerBin: foreign })).rejects.toMatchObject({
      code: "ARCH_MISMATCH",
    });
    expect(await resolveJailerBinary({ ...base, firecrackerRoot: join(root, "none") })).toBeUndefined();
  });

  it.skipIf(!isRoot)(
    `a jail base too long for a VM's API socket path is CONFIG_INVALID at the first start${isRoot ? "" : " (skipped: needs root)"}`,
    async () => {
      const config = createConfig({
        stateDir: join(root, "state"),
        jailerBin: "/bin/true",
        jailChrootBaseDir: join(root, "state", "j".repeat(80)),
      });
      const error = await launchModeFor({ config }).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: "CONFIG_INVALID" });
      expect((error as Error).message).toMatch(/Unix sockets hold 107.*SBX_JAIL_CHROOT_BASE_DIR/s);
    },
  );

  it.skipIf(!hybridCgroups)(
    `cgroup v2 where the v2 tree lacks cpu, memory or pids (a hybrid host) is CONFIG_INVALID${hybridCgroups ? "" : " (skipped: not a hybrid cgroup host, or not root)"}`,
    async () => {
      const config = createConfig({
        stateDir: join(root, "state"),
        jailerBin: "/bin/true",
        jailCgroupVersion: 2,
      });
      const error = await launchModeFor({ config }).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: "CONFIG_INVALID" });
      expect((error as Error).message).toMatch(/SBX_JAIL_CGROUP_VERSION=2/);
      // Left to choose, the orchestrator takes v1 on such a host.
      const chosen = await launchModeFor({
        config: createConfig({ ...config, cpuTemplate: undefined, jailCgroupVersion: undefined }),
      });
      expect(chosen).toMatchObject({ jailed: true, jailer: { cgroupVersion: 1 } });
    },
  );

  it.skipIf(!isRoot || !existsSync("/sys/fs/cgroup/pids/cgroup.procs"))(
    `opening a state directory removes the chroots and cgroups of jailed VMs that no longer run${isRoot ? "" : " (skipped: needs root and a v1 pids hierarchy)"}`,
    async () => {
      const config = createConfig({ stateDir: join(root, "state"), unjailed: true });
      const layout = jailLayout(config);
      // What a template build's VM leaves when its owner is SIGKILLed (no sandbox record names it).
      const chroot = join(layout.chrootBaseDir, "firecracker", "template-0badcafe", "root");
      mkdirSync(chroot, { recursive: true });
      writeFileSync(join(chroot, "vmstate"), "x");
      const cgroup = join("/sys/fs/cgroup/pids", layout.parentCgroup, "template-0badcafe");
      mkdirSync(cgroup, { recursive: true });
      try {
        await using state = await openOrchestratorState(config);
        expect(state.reclaimed.staleJails?.removed).toEqual(["template-0badcafe"]);
        expect(existsSync(join(layout.chrootBaseDir, "firecracker", "template-0badcafe"))).toBe(false);
        expect(existsSync(cgroup)).toBe(false);
      } finally {
        if (existsSync(cgroup)) rmdirSync(cgroup);
        for (const dir of [layout.parentCgroup, layout.parentCgroup.split("/")[0]!]) {
          try {
            rmdirSync(join("/sys/fs/cgroup/pids", dir));
          } catch {
            // shared with a run in progress, or never made
          }
        }
      }
    },
  );

  it.skipIf(fc.skipReason !== undefined)(
    `unjailed (the opt-out), every start is warned about${fc.skipReason ? ` (skipped: ${fc.skipReason})` : ""}`,
    async () => {
      const config = createConfig({ stateDir: join(root, "state"), unjailed: true });
      const warnings: string[] = [];
      const logger = { ...silentLogger, warn: (_fields: object, message: string) => warnings.push(message) };
      for (const id of ["warned-1", "warned-2"]) {
        await using vm = await launchVm({
          mode: { jailed: false },
          config,
          id,
          firecrackerBinary: fc.binary!,
          workDir: root,
          logger,
        });
        expect(vm.jailed).toBe(false);
        expect(vm.owner).toBeUndefined();
      }
      expect(warnings.filter((w) => /unjailed, as root \(SBX_UNJAILED=1\)/.test(w))).toHaveLength(2);
    },
  );
});
