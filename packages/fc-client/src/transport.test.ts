import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createFirecrackerClient } from "./client.ts";
import { FirecrackerApiError } from "./errors.ts";
import { rejection } from "./test-errors.ts";
import { fdCount, settledFdCount } from "./test-process-counts.ts";

// Raw servers that misbehave in the ways a crashing or wedged Firecracker can.
let dir: string;
let server: Server | undefined;
const sockets = new Set<Socket>();
let fdsBefore = 0;
/** Connections the current test's rawServer accepted. */
let connections = 0;

beforeEach(() => {
  fdsBefore = fdCount();
  connections = 0;
  dir = mkdtempSync(join(tmpdir(), "sbx-fc-transport-"));
});
afterEach(async () => {
  for (const socket of sockets) socket.destroy();
  sockets.clear();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
  rmSync(dir, { recursive: true, force: true });
  expect(await settledFdCount(fdsBefore)).toBe(fdsBefore);
});

async function rawServer(onRequest: (socket: Socket) => void): Promise<string> {
  const path = join(dir, "api.sock");
  server = createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on("data", () => onRequest(socket));
  });
  await new Promise<void>((resolve) => server!.listen(path, resolve));
  return path;
}

const answer = (status: string, body: string) =>
  `HTTP/1.1 ${status}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;

describe("bad answers from the API socket", () => {
  it("malformed JSON on a 200 → INVALID_RESPONSE", async () => {
    const socketPath = await rawServer((s) => s.write(answer("200 OK", '{"app_name": "Firecracker", ')));
    await using client = createFirecrackerClient({ socketPath, arch: "amd64" });
    const error = await rejection(client.describeInstance());
    expect(error.code).toBe("INVALID_RESPONSE");
    expect(error.message).toMatch(/not JSON/);
  });

  it("a 200 that is not the spec's model → INVALID_RESPONSE naming the model", async () => {
    const socketPath = await rawServer((s) => s.write(answer("200 OK", '{"firecracker_version": 114}')));
    await using client = createFirecrackerClient({ socketPath, arch: "amd64" });
    const error = await rejection(client.getFirecrackerVersion());
    expect(error.code).toBe("INVALID_RESPONSE");
    expect(error.message).toMatch(/FirecrackerVersion/);
  });

  it("a socket that closes mid-answer → TRANSPORT", async () => {
    const socketPath = await rawServer((s) => {
      s.write('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"app_na');
      setTimeout(() => s.destroy(), 10);
    });
    await using client = createFirecrackerClient({ socketPath, arch: "amd64" });
    const error = await rejection(client.describeInstance());
    expect(error.code).toBe("TRANSPORT");
    expect(error.message).toMatch(/closed before the whole answer/);
  });

  it("a socket that never answers → TIMEOUT after the call's timeout", async () => {
    const socketPath = await rawServer(() => {});
    await using client = createFirecrackerClient({ socketPath, arch: "amd64", timeoutMs: 5_000 });
    const error = await rejection(client.describeInstance({ timeoutMs: 150 }));
    expect(error.code).toBe("TIMEOUT");
    expect(error.message).toMatch(/150 ms/);
  });

  it("times out a request on a kept-alive connection whose earlier requests had other timeouts", async () => {
    // Answers the first two requests, then goes silent: the third waits on the same connection.
    let requests = 0;
    let thirdArrived: () => void = () => {};
    const third = new Promise<void>((resolve) => {
      thirdArrived = resolve;
    });
    const socketPath = await rawServer((socket) => {
      if (++requests <= 2) socket.write(answer("200 OK", '{"firecracker_version":"1.16.1"}'));
      else thirdArrived();
    });
    // The connection's one timer runs on fake time, so the test says exactly when each deadline falls.
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "performance"] });
    try {
      await using client = createFirecrackerClient({ socketPath, arch: "amd64" });
      await client.getFirecrackerVersion({ timeoutMs: 60_000 });
      // A shorter timeout than the armed one must not wait for the armed one.
      await client.getFirecrackerVersion({ timeoutMs: 200 });
      let settled = false;
      const pending = rejection(client.getFirecrackerVersion({ timeoutMs: 300 })).finally(() => {
        settled = true;
      });
      await third;
      await vi.advanceTimersByTimeAsync(299);
      expect(settled).toBe(false); // not before its own deadline
      await vi.advanceTimersByTimeAsync(1);
      const error = await pending; // at it, not at the old 60 s
      expect(error.code).toBe("TIMEOUT");
      expect(error.message).toMatch(/300 ms/);
      expect(requests).toBe(3);
    } finally {
      vi.useRealTimers();
    }
  });

  it("an AbortSignal → ABORTED, before or during the call", async () => {
    const socketPath = await rawServer(() => {});
    await using client = createFirecrackerClient({ socketPath, arch: "amd64" });
    expect((await rejection(client.describeInstance({ signal: AbortSignal.abort() }))).code).toBe("ABORTED");
    const controller = new AbortController();
    const pending = client.describeInstance({ signal: controller.signal });
    setTimeout(() => controller.abort(new Error("user gave up")), 30);
    expect((await rejection(pending)).code).toBe("ABORTED");
  });

  it("a 400 with and without fault_message → FirecrackerApiError", async () => {
    let n = 0;
    const socketPath = await rawServer((s) => {
      s.write(
        n++ === 0
          ? answer("400 Bad Request", '{"fault_message":"Invalid request method and/or path"}')
          : answer("400 Bad Request", ""),
      );
    });
    await using client = createFirecrackerClient({ socketPath, arch: "amd64" });
    const first = await rejection(client.putMetrics({ metrics_path: "/m" }));
    expect(first).toBeInstanceOf(FirecrackerApiError);
    expect((first as FirecrackerApiError).faultMessage).toBe("Invalid request method and/or path");
    const second = await rejection(client.putMetrics({ metrics_path: "/m" }));
    expect(second).toMatchObject({ code: "API_ERROR", status: 400, faultMessage: undefined });
  });

  it("no server at the path → TRANSPORT with the fix", async () => {
    await using client = createFirecrackerClient({ socketPath: join(dir, "absent.sock"), arch: "amd64" });
    const error = await rejection(client.describeInstance());
    expect(error.code).toBe("TRANSPORT");
    expect(error.message).toMatch(/ENOENT.*is Firecracker running/);
  });

  it("reuses one keep-alive connection for a sequence of calls", async () => {
    const path = await rawServer((socket) =>
      socket.write(answer("200 OK", '{"firecracker_version":"1.16.1"}')),
    );
    await using client = createFirecrackerClient({ socketPath: path, arch: "amd64" });
    for (let i = 0; i < 5; i++)
      expect((await client.getFirecrackerVersion()).firecracker_version).toBe("1.16.1");
    expect(connections).toBe(1);
  });

  it("reads headers in any case, and refuses a Content-Length that is not a plain number", async () => {
    const version = '{"firecracker_version":"1.16.1"}';
    let reply = `HTTP/1.1 200 OK\r\ncOnTeNt-LeNgTh:   ${version.length}  \r\n\r\n${version}`;
    const path = await rawServer((socket) => socket.write(reply));
    await using client = createFirecrackerClient({ socketPath: path, arch: "amd64" });
    expect((await client.getFirecrackerVersion()).firecracker_version).toBe("1.16.1");
    for (const bad of ["", "-1", "1e3", "12abc", "99999999999999999999"]) {
      reply = `HTTP/1.1 200 OK\r\nContent-Length: ${bad}\r\n\r\n{}`;
      const error = await rejection(client.describeInstance());
      expect(error.code).toBe("INVALID_RESPONSE");
      expect(error.message).toContain("bad Content-Length");
    }
  });

  it("does not reuse a connection the server answered with Connection: close", async () => {
    const body = '{"firecracker_version":"1.16.1"}';
    const path = await rawServer((socket) =>
      socket.end(`HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: ${body.length}\r\n\r\n${body}`),
    );
    await using client = createFirecrackerClient({ socketPath: path, arch: "amd64" });
    for (let i = 0; i < 3; i++) await client.getFirecrackerVersion();
    expect(connections).toBe(3);
  });
});
