// Protocol fuzzing, both parsers, >= 100k cases each: the C agent's (JSON parser and frame header
// check under ASan/UBSan through a driver, and the real agent fed mutated frames over a socket) and
// the host's FrameDecoder. Hostile input gets a typed error and a closed stream or connection; no
// crash, no leaked fd.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostArch } from "@sbx/arch";
import { xorshift32 } from "@sbx/arch/testing";
import { describe, expect, it } from "vitest";
import { agentSourceFiles, ensureAgentBinary } from "./agent-binary.ts";
import { AgentError } from "./errors.ts";
import { type DecodedFrame, encodeControl, encodeFrame, FrameDecoder, FrameKind } from "./protocol.ts";
import { agentFds, childProcesses, openFds } from "./test-counts.ts";
import { settle } from "./testing/namespaced-agent.ts";

const sanitizerProbe = spawnSync("gcc", ["-fsanitize=address,undefined", "-x", "c", "-o", "/dev/null", "-"], {
  input: "int main(void){return 0;}",
});
const noSanitizers = sanitizerProbe.status === 0 ? "" : "gcc with libasan/libubsan is not installed";
if (noSanitizers) console.log(`C parser fuzz driver: skipped: ${noSanitizers}`);

describe("the agent's C parsers", () => {
  it.skipIf(noSanitizers !== "")(
    "survive 200k mutated and random JSON documents and frame headers under ASan/UBSan (needs gcc sanitizers)",
    async () => {
      const dir = mkdtempSync(join(tmpdir(), "sbx-agent-fuzz-"));
      try {
        const sources = (await agentSourceFiles()).filter(
          (f) => f.endsWith("/json.c") || f.endsWith("/frame.c"),
        );
        const driver = join(dir, "fuzz-parsers");
        execFileSync("gcc", [
          "-g",
          "-O1",
          "-fsanitize=address,undefined",
          "-fno-sanitize-recover=all",
          "-o",
          driver,
          join(import.meta.dirname, "..", "native", "fuzz", "fuzz-parsers.c"),
          ...sources,
          "-lm",
        ]);
        const out = execFileSync(driver, ["200000", String(Date.now() % 1_000_000)], { encoding: "utf8" });
        const [, cases, parsed] = out.trim().split(" ");
        expect(Number(cases)).toBe(200_000);
        // The mutations keep a share of documents valid, so the handlers' accessors run too.
        expect(Number(parsed)).toBeGreaterThan(1000);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
    120_000,
  );

  it("the running agent answers 100k mutated requests with typed errors or results, and 3k hostile headers by closing the connection, without crashing or leaking fds", async () => {
    const binary = await ensureAgentBinary(hostArch());
    const dir = mkdtempSync(join(tmpdir(), "sbx-agent-fuzz-"));
    const path = join(dir, "agent.sock");
    const fdsBefore = openFds();
    const childrenBefore = childProcesses().length;
    const agent = spawn(binary.path, ["--unix", path, "--quiet"], { stdio: "ignore" });
    try {
      await settle(
        () => spawnSync("test", ["-S", path]).status === 0,
        (ok) => ok,
      );
      const agentPid = agent.pid as number;
      const baselineFds = agentFds(agentPid);
      const random = xorshift32(Date.now());
      // Harmless seeds only: whatever a mutation makes of them, nothing is started or changed.
      const seeds = [
        '{"op":"stat","path":"/nonexistent/x","follow":true}',
        '{"op":"list","path":"/nonexistent"}',
        '{"op":"ps"}',
        '{"op":"health"}',
        '{"op":"signal","pid":999999999,"signal":15,"group":true}',
        '{"op":"resize","pid":999999999,"rows":1,"cols":2}',
        '{"op":"attach","pid":999999999}',
        '{"op":"read","path":"/nonexistent/\\u00e9\\ud83d\\ude00"}',
      ];
      const mutate = (seed: string): Buffer => {
        const bytes = Buffer.from(seed);
        const edits = 1 + (random() % 6);
        let length = bytes.length;
        for (let e = 0; e < edits; e++) {
          const at = random() % length;
          const kind = random() % 3;
          if (kind === 0) bytes[at] = random() & 0xff;
          else if (kind === 1) bytes[at] = '{}[]",:\\u0123456789eE.-+ tfn'.charCodeAt(random() % 29);
          else length = Math.max(1, at);
        }
        return bytes.subarray(0, length);
      };

      let typedErrors = 0;
      let results = 0;
      const total = 100_000;
      let sent = 0;
      while (sent < total) {
        const socket = await openSocket(path);
        const replies = collect(socket);
        socket.write(encodeControl(0, { op: "hello", versions: [1] }));
        // Batches of 500 requests, each on its own stream; every one must end with result or error.
        const batch = Math.min(25_000, total - sent);
        for (let i = 1; i <= batch; i++) {
          const payload =
            random() % 10 === 0
              ? Buffer.from(Array.from({ length: random() % 64 }, () => random() & 0xff))
              : mutate(seeds[random() % seeds.length] as string);
          socket.write(encodeFrame(i, FrameKind.control, 0, payload.length > 0 ? payload : Buffer.from("x")));
          if (i % 500 === 0) await replies.until(i);
        }
        await replies.until(batch);
        for (const message of replies.terminal.values()) {
          if (message === "error") typedErrors++;
          else results++;
        }
        expect(replies.terminal.size).toBe(batch);
        socket.destroy();
        sent += batch;
      }
      expect(typedErrors + results).toBe(total);
      expect(typedErrors).toBeGreaterThan(total / 2);

      // Hostile headers: each connection gets one; the agent answers PROTOCOL_ERROR on stream 0 and closes.
      let closedWithError = 0;
      for (let i = 0; i < 3000; i++) {
        const socket = await openSocket(path);
        const replies = collect(socket);
        const header = Buffer.alloc(12);
        for (let b = 0; b < 12; b++) header[b] = random() & 0xff;
        header[0] = random() % 4 === 0 ? 0 : (header[0] as number);
        // One write: a write after the agent closed would fail (EPIPE) and drop its unread reply.
        socket.write(
          Buffer.concat([
            encodeControl(0, { op: "hello", versions: [1] }),
            header,
            Buffer.alloc(random() % 32),
          ]),
        );
        const outcome = await Promise.race([
          replies.closed,
          new Promise((r) => setTimeout(() => r("open"), 200)),
        ]);
        if (outcome === "closed" && replies.connectionError) closedWithError++;
        socket.destroy();
      }
      // Almost every random header breaks a rule; a valid one just waits for its payload.
      expect(closedWithError).toBeGreaterThan(2900);

      const health = await openSocket(path);
      const answer = collect(health);
      health.write(encodeControl(0, { op: "hello", versions: [1] }));
      health.write(encodeControl(1, { op: "health" }));
      await answer.until(1);
      expect(answer.terminal.get(1)).toBe("result");
      health.destroy();
      expect(agent.exitCode).toBeNull();
      expect(
        await settle(
          () => agentFds(agentPid),
          (n) => n <= baselineFds,
        ),
      ).toBe(baselineFds);
    } finally {
      agent.kill("SIGKILL");
      await new Promise((resolve) => (agent.exitCode === null ? agent.once("exit", resolve) : resolve(null)));
      rmSync(dir, { recursive: true, force: true });
    }
    expect(
      await settle(
        () => openFds(),
        (n) => n <= fdsBefore,
      ),
    ).toBeLessThanOrEqual(fdsBefore);
    expect(childProcesses().length).toBe(childrenBefore);
  }, 180_000);
});

function openSocket(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path });
    socket.once("connect", () => resolve(socket));
    socket.once("error", reject);
  });
}

/** Decodes what the agent sends with the host's decoder: every reply must pass the zod schemas. */
function collect(socket: Socket) {
  const decoder = new FrameDecoder();
  const terminal = new Map<number, "result" | "error">();
  let waiter: { count: number; resolve: () => void } | undefined;
  let connectionError = false;
  let markClosed!: (value: string) => void;
  const closed = new Promise<string>((resolve) => {
    markClosed = resolve;
  });
  socket.on("data", (chunk: Buffer) => {
    decoder.push(chunk, (frame: DecodedFrame) => {
      if (frame.kind !== "control") throw new Error(`unexpected ${frame.kind} frame`);
      if (frame.stream === 0) {
        if (frame.message.type === "error") connectionError = true;
        return;
      }
      const type = frame.message.type;
      if (type === "result" || type === "error") terminal.set(frame.stream, type);
      if (waiter && terminal.size >= waiter.count) waiter.resolve();
    });
  });
  socket.on("error", () => {});
  socket.on("close", () => {
    markClosed("closed");
    waiter?.resolve();
  });
  return {
    terminal,
    closed,
    get connectionError() {
      return connectionError;
    },
    until(count: number): Promise<void> {
      if (terminal.size >= count) return Promise.resolve();
      return new Promise((resolve) => {
        waiter = { count, resolve };
      });
    },
  };
}

describe("the host's FrameDecoder", () => {
  it("turns 100k random and mutated byte streams into frames or PROTOCOL_ERROR, nothing else", () => {
    const random = xorshift32(12345);
    const valid = [
      encodeControl(3, { type: "exit", pid: 7, exitCode: 0, signal: null }),
      encodeFrame(3, FrameKind.data, 1, Buffer.from("hello")),
      encodeFrame(3, FrameKind.window, 0, Buffer.from([0, 0, 16, 0])),
      encodeControl(0, {
        type: "hello",
        version: 1,
        agent: "0.1.0",
        machine: "x86_64",
        pid: 1,
        maxFrame: 1048576,
        maxControl: 262144,
        maxStreams: 256,
        window: 1048576,
      }),
      encodeControl(5, {
        type: "entries",
        entries: [{ name: "a", type: "file", size: 1, mode: 420, uid: 0, gid: 0, mtimeMs: 1 }],
      }),
    ];
    let frames = 0;
    let protocolErrors = 0;
    for (let i = 0; i < 100_000; i++) {
      const decoder = new FrameDecoder();
      let input: Buffer;
      if (random() % 4 === 0)
        input = Buffer.from(Array.from({ length: random() % 64 }, () => random() & 0xff));
      else {
        input = Buffer.concat(
          Array.from({ length: 1 + (random() % 3) }, () => valid[random() % valid.length] as Buffer),
        );
        for (let e = random() % 4; e >= 0; e--) input[random() % input.length] = random() & 0xff;
      }
      try {
        // Split at a random point: the decoder must not depend on how reads are cut.
        const cut = random() % (input.length + 1);
        decoder.push(input.subarray(0, cut), () => frames++);
        decoder.push(input.subarray(cut), () => frames++);
      } catch (error) {
        expect(error).toBeInstanceOf(AgentError);
        expect((error as AgentError).code).toBe("PROTOCOL_ERROR");
        protocolErrors++;
      }
    }
    expect(protocolErrors).toBeGreaterThan(10_000);
    expect(frames).toBeGreaterThan(10_000);
  });

  it("decodes the same frames however the byte stream is cut", () => {
    const random = xorshift32(99);
    const frames = [
      encodeFrame(1, FrameKind.data, 1, Buffer.alloc(70_000, 1)),
      encodeControl(1, { type: "started", pid: 3, pty: false }),
      encodeFrame(1, FrameKind.data, 2, Buffer.from("err")),
      encodeControl(1, { type: "exit", pid: 3, exitCode: null, signal: 9 }),
    ];
    const stream = Buffer.concat(frames);
    for (let round = 0; round < 200; round++) {
      const decoder = new FrameDecoder();
      const seen: string[] = [];
      let dataBytes = 0;
      let offset = 0;
      while (offset < stream.length) {
        const take = 1 + (random() % 9000);
        decoder.push(stream.subarray(offset, offset + take), (frame) => {
          if (frame.kind === "data") dataBytes += frame.data.length;
          else if (frame.kind === "control") seen.push(frame.message.type);
        });
        offset += take;
      }
      expect(seen).toEqual(["started", "exit"]);
      expect(dataBytes).toBe(70_003);
    }
  });

  it("refuses oversized frames before buffering them", () => {
    const header = encodeFrame(1, FrameKind.control, 0, Buffer.alloc(0));
    header.writeUInt32BE(64 << 20, 0);
    expect(() => new FrameDecoder().push(header, () => {})).toThrow(/exceeds/);
  });
});
