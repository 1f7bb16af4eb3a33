// `sbx sandbox exec` and `sbx sandbox cp`: straight to the sandbox's in-guest agent through the vsock
// socket in its directory (Firecracker's hybrid vsock), so output streams as it comes and nothing
// large passes through `sbx serve`.
import { createReadStream } from "node:fs";
import { open, rename, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { AgentClient, firecrackerVsockTransport } from "@sbx/agent";
import type { OrchestratorConfig } from "../config.ts";
import { OrchestratorError } from "../errors.ts";
import { resolveIdPrefix } from "../sandbox-id.ts";
import { StateDirectory } from "../state-dir.ts";
import { AGENT_VSOCK_PORT, AGENT_VSOCK_SOCKET } from "../template-build.ts";

export interface AgentCommandIo {
  stdout: { write(text: string | Uint8Array): unknown };
  stderr: { write(text: string | Uint8Array): unknown };
}

/** The agent of a running sandbox, by id or unique prefix. */
export async function sandboxAgent(config: OrchestratorConfig, idPrefix: string): Promise<AgentClient> {
  const stateDir = new StateDirectory(config.stateDir);
  const { records } = await stateDir.listSandboxes();
  const id = resolveIdPrefix(
    idPrefix,
    records.filter((r) => r.state === "running").map((r) => r.id),
  );
  return new AgentClient(
    firecrackerVsockTransport({
      udsPath: join(stateDir.sandboxDir(id), AGENT_VSOCK_SOCKET),
      port: AGENT_VSOCK_PORT,
    }),
  );
}

/** Runs `argv` in the sandbox, streaming its output; returns its exit code (128 + signal when killed). */
export async function execInSandbox(
  config: OrchestratorConfig,
  idPrefix: string,
  argv: string[],
  options: { json: boolean },
  io: AgentCommandIo,
): Promise<number> {
  if (argv.length === 0)
    throw new OrchestratorError("INVALID_OPTIONS", "sandbox exec needs a command after --");
  await using client = await sandboxAgent(config, idPrefix);
  if (options.json) {
    const result = await client.commands.run(argv);
    io.stdout.write(
      `${JSON.stringify({ exitCode: result.exitCode, signal: result.signal, stdout: result.stdout.toString(), stderr: result.stderr.toString() }, null, 2)}\n`,
    );
    return exitCodeOf(result);
  }
  const status = await client.commands.run(argv, {
    onStdout: (data) => io.stdout.write(data),
    onStderr: (data) => io.stderr.write(data),
    maxOutputBytes: 0,
  });
  return exitCodeOf(status);
}

function exitCodeOf(status: { exitCode: number | null; signal: number | null }): number {
  return status.exitCode ?? 128 + (status.signal ?? 0);
}

const REMOTE = /^([a-z0-9]{1,32}):(\/.*)$/;

/** `src` and `dest` are local paths or `id:/guest/path` (exactly one side remote). */
export async function copyWithSandbox(
  config: OrchestratorConfig,
  source: string,
  destination: string,
): Promise<{ bytes: number }> {
  const from = REMOTE.exec(source);
  const to = REMOTE.exec(destination);
  if (Boolean(from) === Boolean(to))
    throw new OrchestratorError(
      "INVALID_OPTIONS",
      "sandbox cp copies between this host and one sandbox: exactly one of <src> and <dest> is id:/path",
    );
  if (to) {
    await using client = await sandboxAgent(config, to[1] as string);
    let bytes = 0;
    const counted = async function* () {
      for await (const chunk of createReadStream(source)) {
        bytes += (chunk as Buffer).length;
        yield chunk as Buffer;
      }
    };
    await client.files.write(to[2] as string, counted());
    return { bytes };
  }
  await using client = await sandboxAgent(config, (from as RegExpExecArray)[1] as string);
  const stream = await client.files.readStream((from as RegExpExecArray)[2] as string);
  // Written beside the destination and renamed: a failed copy leaves no half file.
  const temp = join(dirname(destination), `.${Date.now().toString(36)}.sbx-cp.tmp`);
  let bytes = 0;
  const handle = await open(temp, "wx", 0o644);
  try {
    for await (const chunk of stream) {
      await handle.write(chunk);
      bytes += chunk.length;
    }
    await handle.sync();
  } catch (error) {
    await handle.close();
    await rm(temp, { force: true });
    throw error;
  }
  await handle.close();
  await rename(temp, destination);
  return { bytes };
}
