import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { FirecrackerLaunchError } from "./errors.ts";
import { fdCount, settledFdCount } from "./test-process-counts.ts";
import { dialVsock, vsockListenPath } from "./vsock.ts";

/** The listener's side of every connection, so a test can close them before it counts its own fds. */
const accepted = new Set<Socket>();

/** A stand-in for Firecracker's host-side vsock socket: CONNECT <port> → OK <n> for known ports. */
function fakeVsockListener(path: string, behaviour: (socket: Socket, port: number) => void): Promise<Server> {
  const server = createServer((socket) => {
    accepted.add(socket);
    let buffered = "";
    const onData = (chunk: Buffer) => {
      buffered += chunk.toString("latin1");
      const newline = buffered.indexOf("\n");
      if (newline === -1) return;
      socket.off("data", onData);
      const match = /^CONNECT (\d+)$/.exec(buffered.slice(0, newline));
      if (!match) {
        socket.destroy();
        return;
      }
      behaviour(socket, Number(match[1]));
    };
    socket.on("data", onData);
    socket.on("error", () => {});
  });
  return new Promise((resolve) => server.listen(path, () => resolve(server)));
}

describe("dialVsock", () => {
  let dir: string;
  let server: Server | undefined;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "sbx-test-vsock-"));
  });
  afterEach(async () => {
    for (const socket of accepted) socket.destroy();
    accepted.clear();
    await new Promise((r) => (server ? server.close(r) : r(undefined)));
    server = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  it("does the CONNECT/OK handshake and keeps bytes sent right after it", async () => {
    const path = join(dir, "v.sock");
    server = await fakeVsockListener(path, (socket, port) => {
      if (port !== 52) return socket.destroy();
      socket.write("OK 1073741824\nhello");
      socket.on("data", (data) => socket.write(`echo:${data.toString()}`));
    });
    const before = fdCount();
    const { socket, hostPort } = await dialVsock({ udsPath: path, port: 52 });
    expect(hostPort).toBe(1073741824);
    socket.write("ping");
    const received = await new Promise<string>((resolve) => {
      let text = "";
      socket.on("data", (d: Buffer) => {
        text += d.toString();
        if (text.includes("echo:ping")) resolve(text);
      });
    });
    expect(received).toBe("helloecho:ping");
    await new Promise<void>((r) => socket.end(() => r()));
    socket.destroy();
    for (const peer of accepted) peer.destroy();
    expect(await settledFdCount(before)).toBe(before);
  });

  it("fails with VSOCK_CONNECT_FAILED when nobody listens in the guest, the socket is missing, or no reply comes", async () => {
    const path = join(dir, "v.sock");
    server = await fakeVsockListener(path, (socket, port) => {
      if (port === 7) return; // hangs
      if (port === 8) return void socket.write("NOPE\n");
      socket.destroy(); // Firecracker closes when the guest port has no listener
    });
    const before = fdCount();
    const closed = await dialVsock({ udsPath: path, port: 1 }).catch((e: unknown) => e);
    expect(closed).toBeInstanceOf(FirecrackerLaunchError);
    expect((closed as FirecrackerLaunchError).code).toBe("VSOCK_CONNECT_FAILED");
    expect((closed as Error).message).toMatch(/closed the connection/);
    const bad = await dialVsock({ udsPath: path, port: 8 }).catch((e: unknown) => e);
    expect((bad as Error).message).toMatch(/unexpected handshake reply "NOPE"/);
    const hung = await dialVsock({ udsPath: path, port: 7, timeoutMs: 50 }).catch((e: unknown) => e);
    expect((hung as Error).message).toMatch(/within 50 ms/);
    const missing = await dialVsock({ udsPath: join(dir, "nope.sock"), port: 1 }).catch((e: unknown) => e);
    expect((missing as Error).message).toMatch(/does not exist/);
    const controller = new AbortController();
    const aborted = dialVsock({ udsPath: path, port: 7, signal: controller.signal }).catch((e: unknown) => e);
    controller.abort();
    expect((await aborted) as Error).toBeInstanceOf(Error);
    await expect(dialVsock({ udsPath: path, port: -1 })).rejects.toThrow(/integer/);
    for (const peer of accepted) peer.destroy();
    expect(await settledFdCount(before)).toBe(before);
  });

  it("names the path for guest-initiated connections", () => {
    expect(vsockListenPath("/tmp/v.sock", 52)).toBe("/tmp/v.sock_52");
  });
});
