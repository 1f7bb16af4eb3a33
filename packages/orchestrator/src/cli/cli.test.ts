import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createConfig } from "../config.ts";
import { importBuild } from "../import-build.ts";
import { openOrchestratorState } from "../orchestrator-state.ts";
import { type ProcessIdentity, processIdentity } from "../process-identity.ts";
import { type SandboxRecord, StateDirectory } from "../state-dir.ts";
import { runCli } from "./cli.ts";

let root: string;
let state: StateDirectory;
const children: ChildProcess[] = [];

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "sbx-cli-"));
  state = await StateDirectory.open(join(root, "state"));
});
afterEach(async () => {
  for (const child of children.splice(0)) child.kill("SIGKILL");
  await rm(root, { recursive: true, force: true });
});

async function sbx(...argv: string[]) {
  let stdout = "";
  let stderr = "";
  const code = await runCli(argv, {
    stdout: { write: (t: string) => (stdout += t) },
    stderr: { write: (t: string) => (stderr += t) },
    env: { SBX_STATE_DIR: join(root, "state"), TARGET_ARCH: "", HOST_BUSYBOX_DIR: join(root, "busybox") },
  });
  return { code, stdout, stderr };
}

async function record(id: string, owner: ProcessIdentity, extra: Partial<SandboxRecord> = {}): Promise<void> {
  await state.writeRecord({
    schemaVersion: 1,
    id,
    createdAt: "2026-11-22T00:00:00.000Z",
    state: "running",
    template: "base",
    owner,
    processes: [],
    sockets: [],
    ...extra,
  });
}

const self = async () => (await processIdentity(process.pid))!;
const gone = async (): Promise<ProcessIdentity> => ({ ...(await self()), startTime: "1" });

describe("sbx", () => {
  it("prints usage for help, and exit 2 for usage errors", async () => {
    expect(await sbx("--help")).toMatchObject({ code: 0, stdout: expect.stringContaining("usage: sbx") });
    expect((await sbx()).code).toBe(2);
    expect(await sbx("frobnicate")).toMatchObject({
      code: 2,
      stderr: expect.stringContaining('unknown command "frobnicate"'),
    });
    expect(await sbx("doctor", "--bogus")).toMatchObject({
      code: 2,
      stderr: expect.stringContaining("--bogus"),
    });
    expect((await sbx("sandbox", "create")).stderr).toContain("--template");
    expect((await sbx("template", "build")).code).toBe(2);
  });

  it("reports every bad environment variable at once", async () => {
    let stderr = "";
    const code = await runCli(["doctor"], {
      stdout: { write: () => undefined },
      stderr: { write: (t: string) => (stderr += t) },
      env: { TARGET_ARCH: "vax", SBX_MAX_SANDBOXES: "lots" },
    });
    expect(code).toBe(1);
    expect(stderr).toContain("TARGET_ARCH");
    expect(stderr).toContain("SBX_MAX_SANDBOXES");
  });

  it("runs doctor with one line per check and a JSON form", async () => {
    const text = await sbx("doctor");
    expect(text.stdout).toMatch(/kvm/);
    expect(text.stdout).toMatch(/FAIL busybox [^\n]*\n(\s+[^\n]*\n)*\s+fix: put a static/);
    expect(text.code).toBe(1);
    const json = JSON.parse((await sbx("doctor", "--json")).stdout);
    expect(json.checks.map((c: { id: string }) => c.id)).toEqual(
      expect.arrayContaining(["kvm", "userfaultfd", "hugepages", "busybox", "firecracker", "iproute2"]),
    );
  });

  it("lists sandboxes from the state directory", async () => {
    expect((await sbx("sandbox", "list")).stdout).toBe("no sandboxes\n");
    await record("a1b2c3d4e5f6", await self());
    await record("a1ffffffffff", await gone());
    const text = await sbx("sandbox", "list");
    expect(text.stdout).toMatch(/^ID\s+STATE\s+TEMPLATE\s+MEMORY\s+AGE\s+OWNER\n/);
    expect(text.stdout).toMatch(
      new RegExp(`a1ffffffffff  running  base      -       \\d+[smhd]\\s+${process.pid} \\(gone\\)`),
    );
    const json = JSON.parse((await sbx("sandbox", "list", "--json")).stdout);
    expect(json.sandboxes.map((s: { id: string; ownerRunning: boolean }) => [s.id, s.ownerRunning])).toEqual([
      ["a1b2c3d4e5f6", true],
      ["a1ffffffffff", false],
    ]);
  });

  it("lists and inspects templates, removes one, and gc frees its build", async () => {
    const config = createConfig({ stateDir: join(root, "state"), firecrackerBin: "/bin/true" });
    await writeFile(join(root, "vmstate"), "vmstate");
    await writeFile(join(root, "mem"), Buffer.alloc(256 * 1024, 1));
    let id: string;
    {
      await using orchestratorState = await openOrchestratorState(config);
      id = (
        await importBuild(orchestratorState, {
          template: "base",
          vmstate: join(root, "vmstate"),
          memory: join(root, "mem"),
          firecrackerVersion: "v1.14.2",
        })
      ).id;
    }
    const ls = await sbx("template", "ls");
    expect(ls.stdout).toMatch(/^NAME\s+BUILD\s+MEMORY\s+VCPUS\s+FIRECRACKER\s+AGE\n/);
    expect(ls.stdout).toMatch(new RegExp(`\nbase\\s+${id}\\s+0 MiB\\s+-\\s+v1\\.14\\.2\\s+\\d+s\n`));
    const inspect = JSON.parse((await sbx("template", "inspect", "base", "--json")).stdout);
    expect(inspect).toMatchObject({ name: "base", build: id, memoryHeader: { builds: [id], entries: 1 } });
    expect((await sbx("template", "inspect", "nope")).stderr).toMatch(/no template "nope"/);
    expect((await sbx("template", "rm", "base")).code).toBe(0);
    const gc = JSON.parse((await sbx("gc", "--json")).stdout);
    expect(gc.removed.map((r: { id: string }) => r.id)).toEqual([id]);
    expect(gc.bytesFreed).toBeGreaterThan(0);
    expect((await sbx("template", "ls")).stdout).toBe("no templates\n");
  });

  it("resolves id prefixes and lists the matches of an ambiguous one", async () => {
    await record("a1b2c3d4e5f6", await self());
    await record("a1ffffffffff", await self());
    const ambiguous = await sbx("sandbox", "kill", "a1");
    expect(ambiguous.code).toBe(1);
    expect(ambiguous.stderr).toContain("a1b2c3d4e5f6, a1ffffffffff");
    const json = JSON.parse((await sbx("sandbox", "kill", "a1", "--json")).stdout);
    expect(json.error).toMatchObject({
      code: "ID_PREFIX_AMBIGUOUS",
      details: { matches: ["a1b2c3d4e5f6", "a1ffffffffff"] },
    });
    expect((await sbx("sandbox", "kill", "zz")).stderr).toContain('no sandbox id starts with "zz"');
    // Owned by a live process that does not answer: refused, not killed behind its back.
    const kill = await sbx("sandbox", "kill", "a1b");
    expect(kill.code).toBe(1);
    expect(kill.stderr).toContain(`a1b2c3d4e5f6 belongs to running pid ${process.pid}`);
    expect((await state.listSandboxes()).records).toHaveLength(2);
  });

  it("kills an orphaned sandbox from its record", async () => {
    const child = spawn("sleep", ["1000"], { stdio: "ignore" });
    children.push(child);
    const exited = new Promise((resolve) => child.once("exit", (_c, signal) => resolve(signal)));
    let identity: ProcessIdentity | undefined;
    for (let i = 0; i < 200 && identity?.cmdline[0] !== "sleep"; i++) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      identity = await processIdentity(child.pid!);
    }
    await record("0badcafe0000", await gone(), { processes: [{ role: "firecracker", identity: identity! }] });
    const killed = await sbx("sandbox", "kill", "0bad");
    expect(killed).toMatchObject({ code: 0, stdout: "killed 0badcafe0000\n" });
    expect(await exited).toBe("SIGTERM");
    expect((await state.listSandboxes()).records).toEqual([]);
  });

  it("says to start sbx serve for the commands that need a running orchestrator", async () => {
    // Without a jailer (and without SBX_UNJAILED=1) a template build stops before its inputs are read.
    const noJailer = await sbx("template", "build", join(root, "no-such-layout"), "--name", "x", "--json");
    expect(noJailer.code).toBe(1);
    expect(JSON.parse(noJailer.stdout).error).toMatchObject({ code: "NOT_AVAILABLE" });
    expect(JSON.parse(noJailer.stdout).error.message).toMatch(/JAILER_BIN.*SBX_UNJAILED=1/s);
    for (const argv of [
      ["sandbox", "create", "--template", "base"],
      ["sandbox", "pause", "a1"],
      ["sandbox", "resume", "a1"],
    ]) {
      const result = await sbx(...argv);
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/needs the orchestrator: start `sbx serve`/);
    }
    expect((await sbx("template", "build", "/tmp/layout")).code).toBe(2); // no --name
    let stdout = "";
    const code = await runCli(["template", "build", join(root, "no-such-layout"), "--name", "x", "--json"], {
      stdout: { write: (t: string) => (stdout += t) },
      stderr: { write: () => true },
      env: { SBX_STATE_DIR: join(root, "state"), HOST_BUSYBOX_DIR: join(root, "busybox"), SBX_UNJAILED: "1" },
    });
    expect(code).toBe(1);
    expect(JSON.parse(stdout).error.message).toMatch(/no-such-layout/);
  });

  it("sbx serve refuses to start when an artifact is missing, with the fix, and takes no lock", async () => {
    const result = await sbx("serve", "--json");
    expect(result.code).toBe(1);
    const error = JSON.parse(result.stdout).error;
    expect(error.code).toBe("ARTIFACT_INVALID");
    expect(error.message).toMatch(/sbx doctor/);
    expect(existsSync(join(root, "state", "orchestrator.lock"))).toBe(false);
    expect(existsSync(join(root, "state", "sbx.sock"))).toBe(false);
  });

  it("runs as a program from source", async () => {
    const main = fileURLToPath(new URL("./main.ts", import.meta.url));
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ["--conditions=@sbx/source", main, "--help"],
      {
        timeout: 20_000,
      },
    );
    expect(stdout).toContain("usage: sbx");
  });
});
