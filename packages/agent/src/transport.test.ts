import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AgentError } from "./errors.ts";
import { onSocketChunks } from "./slab-reader.ts";
import { openFds } from "./test-counts.ts";
import { settle } from "./testing/namespaced-agent.ts";
import { firecrackerVsockTransport, tcpTransport, unixSocketTransport } from "./transport.ts";

let dir: string;
let server: Server | undefined;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "sbx-agent-transport-"));
});
afterEach(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
  rmSync(dir, { recursive: true, force: true });
});

/** A hybrid-vsock host socket that answers CONNECT with `reply` (split into the given pieces). */
async function fakeFirecracker(
  pieces: (string | Buffer)[] | "close",
): Promise<{ path: string; lines: string[] }> {
  const path = join(dir, "v.sock");
  const lines: string[] = [];
  server = createServer((socket) => {
    socket.once("data", async (chunk) => {
      lines.push(chunk.toString());
      if (pieces === "close") {
        socket.destroy();
        return;
      }
      for (const piece of pieces) {
        socket.write(piece);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    });
    socket.on("error", () => {});
  });
  await new Promise<void>((resolve) => server?.listen(path, resolve));
  return { path, lines };
}

describe("firecrackerVsockTransport", () => {
  it("sends CONNECT <port>, takes OK <n> even split across reads, and keeps bytes that follow it", async () => {
    const { path, lines } = await fakeFirecracker(["O", "K 10", "73\nagent-", "bytes"]);
    const socket = await firecrackerVsockTransport({ udsPath: path, port: 1024 }).connect();
    expect(lines).toEqual(["CONNECT 1024\n"]);
    // What followed the reply in its read waits for the connection, ahead of later reads.
    let received = "";
    await new Promise<void>((resolve) =>
      onSocketChunks(socket, (chunk) => {
        received += chunk.toString();
        if (received.length >= "agent-bytes".length) resolve();
      }),
    );
    expect(received).toBe("agent-bytes");
    socket.destroy();
  });

  it("fails with VSOCK_CONNECT_FAILED when Firecracker closes (nothing listens) or replies otherwise", async () => {
    const fds = openFds();
    const closed = await fakeFirecracker("close");
    await expect(
      firecrackerVsockTransport({ udsPath: closed.path, port: 7 }).connect(),
    ).rejects.toMatchObject({
      code: "VSOCK_CONNECT_FAILED",
    });
    await new Promise<void>((resolve) => server?.close(() => resolve()));
    const wrong = await fakeFirecracker(["NOPE 1\n"]);
    await expect(firecrackerVsockTransport({ udsPath: wrong.path, port: 7 }).connect()).rejects.toMatchObject(
      {
        code: "VSOCK_CONNECT_FAILED",
        message: expect.stringContaining("NOPE 1"),
      },
    );
    await new Promise<void>((resolve) => server?.close(() => resolve()));
    const endless = await fakeFirecracker(["x".repeat(200)]);
    await expect(
      firecrackerVsockTransport({ udsPath: endless.path, port: 7 }).connect(),
    ).rejects.toMatchObject({
      code: "VSOCK_CONNECT_FAILED",
    });
    await new Promise<void>((resolve) => server?.close(() => resolve()));
    server = undefined;
    expect(
      await settle(
        () => openFds(),
        (n) => n <= fds,
      ),
    ).toBeLessThanOrEqual(fds);
  });

  it("times out a silent host socket and refuses bad options with INVALID_OPTIONS", async () => {
    const { path } = await fakeFirecracker([]);
    await expect(
      firecrackerVsockTransport({ udsPath: path, port: 7, handshakeTimeoutMs: 50 }).connect(),
    ).rejects.toMatchObject({ code: "VSOCK_CONNECT_FAILED", message: expect.stringContaining("50 ms") });
    expect(() => firecrackerVsockTransport({ udsPath: path, port: 0 })).toThrow(AgentError);
    expect(() => tcpTransport({ host: "", port: 1 })).toThrow(/host/);
    expect(() => unixSocketTransport({ path: "x".repeat(200) })).toThrow(AgentError);
  });

  it("reports an absent socket as AGENT_UNREACHABLE and honours an aborted signal", async () => {
    await expect(unixSocketTransport({ path: join(dir, "none.sock") }).connect()).rejects.toMatchObject({
      code: "AGENT_UNREACHABLE",
    });
    await expect(
      unixSocketTransport({ path: join(dir, "none.sock") }).connect(AbortSignal.abort()),
    ).rejects.toMatchObject({ code: "ABORTED" });
  });
});
