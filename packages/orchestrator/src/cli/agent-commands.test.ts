// `sbx sandbox exec` and `sbx sandbox cp` against the real agent: chrooted in namespaces the way a guest
// runs it, reached through a hybrid-vsock socket in the sandbox's directory, as Firecracker would offer it.
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureAgentBinary } from "@sbx/agent";
import {
  namespacedAgentUnavailable,
  settle,
  startHybridVsockProxy,
  startNamespacedAgent,
} from "@sbx/agent/testing";
import { hostArch } from "@sbx/arch";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { processIdentity } from "../process-identity.ts";
import { StateDirectory } from "../state-dir.ts";
import { AGENT_VSOCK_PORT, AGENT_VSOCK_SOCKET } from "../template-build.ts";
import { runCli } from "./cli.ts";

const unavailable = namespacedAgentUnavailable();
if (unavailable) console.log(`[orchestrator] sandbox exec/cp tests skipped: ${unavailable}`);

const fdCount = () => readdirSync("/proc/self/fd").length;

describe.skipIf(unavailable !== "")(
  `sbx sandbox exec and cp${unavailable ? ` (skipped: ${unavailable})` : ""}`,
  () => {
    let root: string;
    let cleanup: (() => PromiseLike<void>)[] = [];
    let fdsBefore: number;
    const id = "abc123def456";

    beforeAll(async () => {
      root = await mkdtemp(join(tmpdir(), "sbx-cli-agent-"));
      const agent = await startNamespacedAgent({ agent: (await ensureAgentBinary(hostArch())).path });
      cleanup.push(() => agent[Symbol.asyncDispose]());
      // A running sandbox's record and directory, with the agent behind its vsock socket.
      const stateDir = await StateDirectory.open(join(root, "state"));
      const owner = (await processIdentity(process.pid))!;
      await stateDir.writeRecord({
        schemaVersion: 1,
        id,
        createdAt: new Date().toISOString(),
        state: "running",
        owner,
        processes: [],
        sockets: [],
      });
      const proxy = await startHybridVsockProxy({
        path: join(stateDir.sandboxDir(id), AGENT_VSOCK_SOCKET),
        ports: { [AGENT_VSOCK_PORT]: agent.unixPath },
      });
      cleanup.push(() => proxy[Symbol.asyncDispose]());
      fdsBefore = fdCount();
    }, 120_000);

    afterAll(async () => {
      for (const undo of cleanup.reverse()) await undo();
      cleanup = [];
      await rm(root, { recursive: true, force: true });
    });

    async function sbx(...argv: string[]) {
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      const code = await runCli(argv, {
        stdout: { write: (text) => out.push(Buffer.from(text)) },
        stderr: { write: (text) => err.push(Buffer.from(text)) },
        env: { SBX_STATE_DIR: join(root, "state") },
      });
      return { code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
    }

    it("exec streams stdout and stderr and exits with the command's code; --json collects them", async () => {
      const run = await sbx(
        "sandbox",
        "exec",
        "abc",
        "--",
        "/bin/sh",
        "-c",
        "echo out; echo err >&2; exit 3",
      );
      expect(run).toEqual({ code: 3, stdout: "out\n", stderr: "err\n" });
      const json = await sbx("sandbox", "exec", "abc", "--json", "--", "/bin/sh", "-c", "echo hi");
      expect(json.code).toBe(0);
      expect(JSON.parse(json.stdout)).toMatchObject({ exitCode: 0, stdout: "hi\n", stderr: "" });
      const killed = await sbx("sandbox", "exec", "abc", "--", "/bin/sh", "-c", "kill -9 $$");
      expect(killed.code).toBe(128 + 9);
    });

    it("cp moves a file in and out byte for byte, and refuses two local or two remote sides", async () => {
      const bytes = randomBytes(3 * 1024 * 1024 + 17);
      await writeFile(join(root, "in.bin"), bytes);
      const put = await sbx("sandbox", "cp", join(root, "in.bin"), `${id}:/tmp/copied.bin`);
      expect(put.code, put.stderr).toBe(0);
      const get = await sbx("sandbox", "cp", `${id}:/tmp/copied.bin`, join(root, "out.bin"));
      expect(get.code, get.stderr).toBe(0);
      expect(readFileSync(join(root, "out.bin")).equals(bytes)).toBe(true);
      expect(readdirSync(root).filter((name) => name.includes(".tmp"))).toEqual([]);
      const both = await sbx("sandbox", "cp", join(root, "in.bin"), join(root, "x.bin"));
      expect(both.code).toBe(1);
      expect(both.stderr).toMatch(/exactly one/);
      // A missing guest file: a typed failure, and no local file appears.
      const missing = await sbx("sandbox", "cp", `${id}:/tmp/none`, join(root, "none.bin"));
      expect(missing.code).toBe(1);
      expect(readdirSync(root)).not.toContain("none.bin");
      // The in-process stand-in for Firecracker's vsock closes its two sockets per connection a moment later.
      expect(await settle(fdCount, (count) => count === fdsBefore)).toBe(fdsBefore);
    });
  },
);
