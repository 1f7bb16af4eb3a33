// The CLI against a real `sbx serve` process and a real Firecracker with the tiny test guest:
// template build (and the no-op rebuild), sandbox create, list, pause, resume, kill, then SIGTERM.
import { type ChildProcess, spawn } from "node:child_process";
import { copyFile, mkdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { hostArch } from "@sbx/arch";
import { buildTestGuest, realFirecracker, TEST_GUEST_READY_MARKER } from "@sbx/fc-client/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { configFromEnv } from "../config.ts";
import { controlServerRunning, controlSocketPath } from "../control.ts";
import { listNetworkNamespaces } from "../network.ts";
import { Orchestrator } from "../orchestrator.ts";
import { networkSkipReason } from "../test-capabilities.ts";
import { testLaunchEnv } from "../test-launch-mode.ts";
import { type TemplateFixture, templateFixture } from "../test-template-fixture.ts";
import { runCli } from "./cli.ts";

const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker({ testGuest: true });
const skipReason = firecrackerSkip ?? networkSkipReason();
if (skipReason) console.log(`[orchestrator] sbx serve end-to-end test skipped: ${skipReason}`);

const GUEST_LINE = "^SBX-GUEST iter=\\d+ sum=";

async function startServe(env: Record<string, string>): Promise<ChildProcess> {
  const main = fileURLToPath(new URL("./main.ts", import.meta.url));
  const child = spawn(process.execPath, ["--conditions=@sbx/source", main, "serve"], {
    env,
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once("data", () => resolve());
    child.once("exit", (code) => reject(new Error(`sbx serve exited with ${code}`)));
  });
  return child;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe.skipIf(skipReason !== undefined)(
  `sbx serve and the sandbox commands${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let fixture: TemplateFixture;
    let env: Record<string, string>;
    let server: ChildProcess;

    const sbx = async (...argv: string[]) => {
      let stdout = "";
      let stderr = "";
      const code = await runCli(argv, {
        stdout: { write: (t: string) => (stdout += t) },
        stderr: { write: (t: string) => (stderr += t) },
        env,
      });
      return { code, stdout, stderr };
    };

    beforeAll(async () => {
      fixture = await templateFixture();
      // The kernel artifact root, laid out as the build resolves it; the test guest is the "kernel".
      const guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
      const kernelDir = join(fixture.dir, "kernels", "6.1", hostArch());
      await mkdir(kernelDir, { recursive: true });
      await copyFile(guest, join(kernelDir, "vmlinux"));
      env = {
        SBX_STATE_DIR: fixture.config.stateDir,
        HOST_BUSYBOX_DIR: fixture.config.busyboxDir,
        KERNEL_DIR: join(fixture.dir, "kernels"),
        KERNEL_VERSION: "6.1",
        FIRECRACKER_BIN: firecrackerBin as string,
        ...testLaunchEnv(),
        PATH: process.env.PATH ?? "/usr/bin:/bin",
      };
      server = await startServe(env);
    }, 60_000);

    afterAll(async () => {
      if (server && server.exitCode === null) server.kill("SIGKILL");
      if (fixture) await rm(fixture.dir, { recursive: true, force: true });
    });

    it("builds a template once, then finds it current", async () => {
      const layout = fixture.layoutDir;
      const args = ["template", "build", layout, "--name", "guest", "--memory", "128", "--vcpus", "1"];
      const built = await sbx(...args, "--ready-line", TEST_GUEST_READY_MARKER, "--json");
      expect(built.code, built.stderr + built.stdout).toBe(0);
      expect(JSON.parse(built.stdout)).toMatchObject({
        name: "guest",
        rebuilt: true,
        reason: "it does not exist yet",
      });
      const again = await sbx(...args);
      expect(again).toMatchObject({
        code: 0,
        stdout: "template guest is current; nothing to do (--force rebuilds)\n",
      });
      const bigger = await sbx(
        "template",
        "build",
        layout,
        "--name",
        "guest",
        "--memory",
        "160",
        "--vcpus",
        "1",
        "--ready-line",
        TEST_GUEST_READY_MARKER,
      );
      expect(bigger.stdout).toMatch(/^built template guest \(memoryMib changed: 128 → 160/);
    }, 120_000);

    it("creates, lists, pauses, resumes and kills sandboxes through the running orchestrator", async () => {
      const created = await sbx("sandbox", "create", "--template", "guest", "--alive-line", GUEST_LINE);
      expect(created.code, created.stderr).toBe(0);
      const id = created.stdout.trim();
      expect(id).toMatch(/^[0-9a-z]+$/);
      const listed = JSON.parse((await sbx("sandbox", "list", "--json")).stdout);
      expect(listed.sandboxes).toEqual([
        expect.objectContaining({ id, state: "running", template: "guest", ownerRunning: true }),
      ]);

      const paused = await sbx("sandbox", "pause", id.slice(0, 6), "--json");
      expect(paused.code, paused.stderr).toBe(0);
      const pausedState = JSON.parse(paused.stdout) as { id: string; build: string };
      // A paused sandbox is named by its id and points at the build its pause made.
      const pausedName = pausedState.id;
      expect(pausedName).toBe(id);
      expect(pausedState.build).toMatch(/^[0-9A-Z]{26}$/);
      const afterPause = JSON.parse((await sbx("sandbox", "list", "--json")).stdout);
      expect(afterPause.sandboxes).toEqual([]);
      expect(afterPause.paused.map((p: { id: string; build: string }) => [p.id, p.build])).toEqual([
        [pausedName, pausedState.build],
      ]);

      const resumed = await sbx("sandbox", "resume", pausedName, "--alive-line", GUEST_LINE);
      expect(resumed.code, resumed.stderr).toBe(0);
      const resumedId = resumed.stdout.trim();
      expect(resumedId).not.toBe(id);
      expect(await sbx("sandbox", "kill", resumedId)).toMatchObject({
        code: 0,
        stdout: `killed ${resumedId}\n`,
      });
      expect(JSON.parse((await sbx("sandbox", "list", "--json")).stdout).sandboxes).toEqual([]);
    }, 120_000);

    it("stops on SIGTERM, killing what it still owns, and leaves no namespace behind", async () => {
      const created = await sbx("sandbox", "create", "--template", "guest", "--json");
      expect(created.code, created.stderr).toBe(0);
      const { networkNamespace } = JSON.parse(created.stdout) as { networkNamespace: string };
      expect(await listNetworkNamespaces()).toContain(networkNamespace);
      const exited = new Promise<number | null>((resolve) => server.once("exit", (code) => resolve(code)));
      server.kill("SIGTERM");
      expect(await exited).toBe(0);
      expect(await controlServerRunning(controlSocketPath(fixture.config))).toBe(false);
      // Its own namespace, by name: other test files create and remove theirs meanwhile.
      expect(await listNetworkNamespaces()).not.toContain(networkNamespace);
      const listed = JSON.parse((await sbx("sandbox", "list", "--json")).stdout);
      expect(listed.sandboxes).toEqual([]);
    }, 60_000);

    it("after a crash (SIGKILL), the next start reclaims the orphaned Firecracker, namespace and files", async () => {
      server = await startServe(env);
      const created = await sbx("sandbox", "create", "--template", "guest", "--json");
      expect(created.code, created.stderr).toBe(0);
      const { id, pid, networkNamespace } = JSON.parse(created.stdout) as {
        id: string;
        pid: number;
        networkNamespace: string;
      };
      expect(alive(pid)).toBe(true);
      const exited = new Promise((resolve) => server.once("exit", resolve));
      // Its Firecracker dies with it (the owner-death signal; a VM without its page-fault server would
      // hang), or is killed by the next start's reclaim, whichever comes first: what is left for the
      // reclaim is the record, the namespace and the files.
      server.kill("SIGKILL");
      await exited;
      expect(await listNetworkNamespaces()).toContain(networkNamespace);

      await using orchestrator = await Orchestrator.open(configFromEnv(env));
      expect(orchestrator.state.reclaimed.reclaimed.map((r) => r.id)).toEqual([id]);
      for (let i = 0; i < 100 && alive(pid); i++) await new Promise((resolve) => setTimeout(resolve, 20));
      expect(alive(pid)).toBe(false);
      // Its own namespace, by name: other test files create and remove theirs meanwhile.
      expect(await listNetworkNamespaces()).not.toContain(networkNamespace);
      expect((await orchestrator.state.stateDir.listSandboxes()).records).toEqual([]);
    }, 60_000);
  },
);
