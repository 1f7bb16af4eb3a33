// The agent's side of the wire format, against the real agent on a Unix socket (no namespaces): the
// handshake, and failing closed on frames a correct client never sends.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { connect, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostArch } from "@sbx/arch";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureAgentBinary } from "./agent-binary.ts";
import { AgentClient } from "./client.ts";
import {
  type AgentMessage,
  Channel,
  encodeControl,
  encodeFrame,
  encodeWindow,
  FrameDecoder,
  FrameKind,
} from "./protocol.ts";
import { agentFds, childProcesses, openFds } from "./test-counts.ts";
import { settle } from "./testing/namespaced-agent.ts";
import { unixSocketTransport } from "./transport.ts";

let dir: string;
let path: string;
let agent: ChildProcess;
let baseline: { fds: number; children: number; agentFds: number };

beforeAll(async () => {
  const binary = await ensureAgentBinary(hostArch());
  baseline = { fds: openFds(), children: childProcesses().length, agentFds: 0 };
  dir = mkdtempSync(join(tmpdir(), "sbx-agent-protocol-"));
  path = join(dir, "agent.sock");
  agent = spawn(binary.path, ["--unix", path, "--quiet"], { stdio: "ignore" });
  await settle(
    () => {
      try {
        return statSync(path).isSocket();
      } catch {
        return false;
      }
    },
    (ok) => ok,
  );
  baseline.agentFds = agentFds(agent.pid as number);
});

afterAll(async () => {
  expect(
    await settle(
      () => agentFds(agent.pid as number),
      (n) => n <= baseline.agentFds,
    ),
  ).toBe(baseline.agentFds);
  agent.kill("SIGKILL");
  await new Promise((resolve) => agent.once("exit", resolve));
  rmSync(dir, { recursive: true, force: true });
  expect(
    await settle(
      () => openFds(),
      (n) => n <= baseline.fds,
    ),
  ).toBeLessThanOrEqual(baseline.fds);
  expect(childProcesses()).toHaveLength(baseline.children);
});

/** A raw connection: what the agent sends, decoded and validated by the host's decoder. */
async function raw(): Promise<{
  socket: Socket;
  messages: [number, AgentMessage][];
  data: number;
  closed: Promise<void>;
}> {
  const socket = connect({ path });
  await new Promise((resolve) => socket.once("connect", resolve));
  const decoder = new FrameDecoder();
  const state = {
    socket,
    messages: [] as [number, AgentMessage][],
    data: 0,
    closed: new Promise<void>((r) => socket.once("close", () => r())),
  };
  socket.on("error", () => {});
  socket.on("data", (chunk: Buffer) =>
    decoder.push(chunk, (frame) => {
      if (frame.kind === "control") state.messages.push([frame.stream, frame.message]);
      else if (frame.kind === "data") state.data += frame.data.length;
    }),
  );
  return state;
}

const hello = encodeControl(0, { op: "hello", versions: [1], window: 65536 });

describe("the agent's handshake and fail-closed rules", () => {
  it("answers a hello with its limits, refuses an unknown version and a first frame that is not the hello", async () => {
    const ok = await raw();
    ok.socket.write(hello);
    await settle(
      () => ok.messages.length,
      (n) => n > 0,
    );
    expect(ok.messages[0]).toEqual([
      0,
      expect.objectContaining({ type: "hello", version: 1, maxFrame: 1 << 20, maxStreams: 256 }),
    ]);
    ok.socket.destroy();

    const future = await raw();
    future.socket.write(encodeControl(0, { op: "hello", versions: [2, 3] }));
    await future.closed;
    expect(future.messages).toEqual([
      [0, expect.objectContaining({ type: "error", code: "UNSUPPORTED_VERSION" })],
    ]);

    const rude = await raw();
    rude.socket.write(encodeControl(1, { op: "health" }));
    await rude.closed;
    expect(rude.messages).toEqual([[0, expect.objectContaining({ type: "error", code: "PROTOCOL_ERROR" })]]);
  });

  it("closes the connection for a request on an open stream, and for stdin beyond the window", async () => {
    const twice = await raw();
    twice.socket.write(
      Buffer.concat([
        hello,
        encodeControl(5, { op: "exec", argv: ["sleep", "5"] }),
        encodeControl(5, { op: "ps" }),
      ]),
    );
    await twice.closed;
    expect(twice.messages.map(([, m]) => m.type)).toEqual(["hello", "started", "error"]);
    expect(twice.messages[2]).toEqual([
      0,
      expect.objectContaining({ code: "PROTOCOL_ERROR", message: expect.stringContaining("still open") }),
    ]);

    const flood = await raw();
    flood.socket.write(Buffer.concat([hello, encodeControl(1, { op: "exec", argv: ["sleep", "5"] })]));
    await settle(
      () => flood.messages.length,
      (n) => n >= 2,
    );
    // The agent's window is 1 MiB per stream; `sleep` reads nothing, so 2 MiB cannot fit.
    const chunk = Buffer.alloc(1 << 20);
    flood.socket.write(
      Buffer.concat([
        encodeFrame(1, FrameKind.data, Channel.stdin, chunk),
        encodeFrame(1, FrameKind.data, Channel.stdin, chunk),
      ]),
    );
    await flood.closed;
    expect(flood.messages.at(-1)).toEqual([
      0,
      expect.objectContaining({ code: "PROTOCOL_ERROR", message: expect.stringContaining("window") }),
    ]);
    // Both sleeps keep running, detached; kill them through a proper client.
    await using client = new AgentClient(unixSocketTransport({ path }));
    for (const process of await client.commands.list()) {
      const handle = await client.commands.connect(process.pid);
      await handle.kill();
      await handle.wait();
    }
    expect(await client.commands.list()).toEqual([]);
  });

  it("sends no more output than the window it was given, and more only after window frames", async () => {
    const conn = await raw();
    conn.socket.write(
      Buffer.concat([
        hello,
        encodeControl(1, { op: "exec", argv: ["head", "-c", "1000000", "/dev/zero"], stdin: false }),
      ]),
    );
    await settle(
      () => conn.data,
      (n) => n >= 65536,
    );
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(conn.data).toBe(65536);
    conn.socket.write(encodeWindow(1, 1_000_000));
    await settle(
      () => conn.messages.some(([, m]) => m.type === "exit"),
      (done) => done,
    );
    expect(conn.data).toBe(1_000_000);
    conn.socket.destroy();
  });

  it("removes a write's temp file when the stream is cancelled or the connection drops", async () => {
    const target = join(dir, "out.txt");
    const conn = await raw();
    conn.socket.write(
      Buffer.concat([
        hello,
        encodeControl(1, { op: "write", path: target }),
        encodeControl(3, { op: "write", path: `${target}.2` }),
      ]),
    );
    await settle(
      () => conn.messages.filter(([, m]) => m.type === "ready").length,
      (n) => n === 2,
    );
    conn.socket.write(
      Buffer.concat([
        encodeFrame(1, FrameKind.data, 0, Buffer.from("partial")),
        encodeFrame(1, FrameKind.cancel, 0),
      ]),
    );
    await settle(
      () => readdirSync(dir).filter((n) => n.includes(".sbx-")).length,
      (n) => n === 1,
    );
    conn.socket.destroy();
    await settle(
      () => readdirSync(dir).filter((n) => n.includes(".sbx-")).length,
      (n) => n === 0,
    );
    expect(readdirSync(dir).sort()).toEqual(["agent.sock"]);
  });
});

describe("the host client's flow control", () => {
  it("grants a quarter window at a time however the socket's reads fall, not a window frame per read", async () => {
    // A proxy between client and agent that counts the window frames the host sends.
    const proxyPath = join(dir, "counting.sock");
    const counted = { windows: 0, granted: 0 };
    const sockets: Socket[] = [];
    const proxy = createServer((host) => {
      const agentSide = connect({ path });
      sockets.push(host, agentSide);
      let header = Buffer.alloc(0);
      let skip = 0;
      host.on("data", (chunk: Buffer) => {
        agentSide.write(chunk);
        let offset = 0;
        while (offset < chunk.length) {
          if (skip > 0) {
            const take = Math.min(skip, chunk.length - offset);
            skip -= take;
            offset += take;
            continue;
          }
          const take = Math.min(12 - header.length, chunk.length - offset);
          header = Buffer.concat([header, chunk.subarray(offset, offset + take)]);
          offset += take;
          if (header.length < 12) break;
          skip = header.readUInt32BE(0);
          if (header[8] === FrameKind.window) {
            counted.windows++;
            // The payload is the grant; it may straddle reads, so read it from the whole chunk when it can.
            if (offset + 4 <= chunk.length) counted.granted += chunk.readUInt32BE(offset);
          }
          header = Buffer.alloc(0);
        }
      });
      agentSide.on("data", (chunk: Buffer) => host.write(chunk));
      host.on("close", () => agentSide.destroy());
      agentSide.on("close", () => host.destroy());
      host.on("error", () => {});
      agentSide.on("error", () => {});
    });
    await new Promise<void>((resolve) => proxy.listen(proxyPath, resolve));
    const window = 4 << 20;
    const total = 64 << 20;
    try {
      await using client = new AgentClient(unixSocketTransport({ path: proxyPath }), { window });
      const handle = await client.commands.start(["head", "-c", String(total), "/dev/zero"], {
        stdin: false,
      });
      let received = 0;
      for await (const chunk of handle.stdout) received += chunk.length;
      expect(await handle.wait()).toEqual({ exitCode: 0, signal: null });
      expect(received).toBe(total);
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => proxy.close(() => resolve()));
    }
    // Each grant is at least a quarter window and no more than was consumed: at most 64 for 64 MiB.
    expect(counted.windows).toBeGreaterThan(0);
    expect(counted.windows).toBeLessThanOrEqual(total / (window / 4));
    expect(counted.granted).toBeLessThanOrEqual(total);
  });
});
