// Prints JSON: requests/s and p50/p99 latency of the client for GET / and PUT /machine-config against
// the fake API (in its own process), next to floors measured in the same run against the same server:
// the same request written by hand on a raw keep-alive net.Socket, and undici's Pool (the transport we
// did not pick). Targets: >= 80% of the floor's requests/s and p50 overhead under 50 µs.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { createInterface } from "node:readline";
import { Pool } from "undici";
import { benchEnvironment } from "../../../scripts/bench-environment.ts";
import { createFirecrackerClient } from "../src/client.ts";

const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 4000);
// Present when node runs with --expose-gc (the package's bench script passes it).
const collectGarbage = (globalThis as { gc?: () => void }).gc;
const WARMUP = 500;

const server = spawn(
  process.execPath,
  ["--conditions=@sbx/source", new URL("./fake-server-process.ts", import.meta.url).pathname],
  {
    stdio: ["pipe", "pipe", "inherit"],
  },
);
const [socketPath] = (await once(createInterface({ input: server.stdout! }), "line")) as [string];

interface Result {
  requestsPerSecond: number;
  p50Us: number;
  p99Us: number;
}

/**
 * Measures contenders in interleaved rounds, so a noisy neighbour or a GC pause on a 2-core machine
 * lands on all of them rather than on whichever ran during it.
 */
async function measure<K extends string>(
  contenders: Record<K, () => Promise<unknown>>,
): Promise<Record<K, Result>> {
  const names = Object.keys(contenders) as K[];
  for (const name of names) for (let i = 0; i < WARMUP; i++) await contenders[name]();
  const rounds = 8;
  const perRound = Math.ceil(ITERATIONS / rounds);
  const samples = Object.fromEntries(names.map((n) => [n, [] as number[]])) as Record<K, number[]>;
  const totals = Object.fromEntries(names.map((n) => [n, 0])) as Record<K, number>;
  for (let round = 0; round < rounds; round++) {
    for (const name of names) {
      const run = contenders[name];
      // Each contender starts on an empty young generation, so it pays for its own garbage, not for
      // what the one before it left (undici allocates several times what the others do).
      collectGarbage?.();
      const start = process.hrtime.bigint();
      for (let i = 0; i < perRound; i++) {
        const t0 = process.hrtime.bigint();
        await run();
        samples[name].push(Number(process.hrtime.bigint() - t0) / 1000);
      }
      totals[name] += Number(process.hrtime.bigint() - start) / 1e9;
    }
  }
  const result = {} as Record<K, Result>;
  for (const name of names) {
    const sorted = samples[name].sort((a, b) => a - b);
    result[name] = {
      requestsPerSecond: Math.round(sorted.length / totals[name]),
      p50Us: Math.round(sorted[Math.floor(sorted.length * 0.5)]!),
      p99Us: Math.round(sorted[Math.floor(sorted.length * 0.99)]!),
    };
  }
  return result;
}

/** The floor: one keep-alive socket, a request string built once, the answer read by Content-Length. */
async function rawSocket(): Promise<{ send: (request: string) => Promise<void>; close: () => void }> {
  const socket: Socket = connect(socketPath);
  await once(socket, "connect");
  let buffered = "";
  let waiting: (() => void) | undefined;
  socket.setEncoding("utf8");
  socket.on("data", (chunk: string) => {
    buffered += chunk;
    const headerEnd = buffered.indexOf("\r\n\r\n");
    if (headerEnd < 0) return;
    const length = Number(/content-length: (\d+)/i.exec(buffered.slice(0, headerEnd))?.[1] ?? 0);
    if (buffered.length < headerEnd + 4 + length) return;
    JSON.parse(buffered.slice(headerEnd + 4, headerEnd + 4 + length) || "null");
    buffered = "";
    waiting?.();
  });
  return {
    send: (request) =>
      new Promise<void>((resolve) => {
        waiting = resolve;
        socket.write(request);
      }),
    close: () => socket.destroy(),
  };
}

const machineConfig = { vcpu_count: 2, mem_size_mib: 256, smt: false, track_dirty_pages: true };
const machineJson = JSON.stringify(machineConfig);
const getRoot = "GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n";
const putMachine = `PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(machineJson)}\r\n\r\n${machineJson}`;

const client = createFirecrackerClient({ socketPath, arch: "amd64", version: "1.16.1" });
const raw = await rawSocket();
const pool = new Pool("http://localhost", { socketPath, connections: 1, pipelining: 1 });
const undiciCall = async (method: "GET" | "PUT", path: string, body?: string) => {
  const response = await pool.request({
    method,
    path,
    headers: body
      ? { "content-type": "application/json", accept: "application/json" }
      : { accept: "application/json" },
    ...(body ? { body } : {}),
  });
  const text = await response.body.text();
  if (text) JSON.parse(text);
};

const results = {
  getRoot: await measure({
    client: () => client.describeInstance(),
    rawSocketFloor: () => raw.send(getRoot),
    undici: () => undiciCall("GET", "/"),
  }),
  putMachineConfig: await measure({
    client: () => client.putMachineConfiguration(machineConfig),
    rawSocketFloor: () => raw.send(putMachine),
    undici: () => undiciCall("PUT", "/machine-config", machineJson),
  }),
};
client.close();
raw.close();
await pool.close();
server.stdin!.end();
await once(server, "exit");

const verdict = (r: { client: Result; rawSocketFloor: Result }) => {
  const ratio = r.client.requestsPerSecond / r.rawSocketFloor.requestsPerSecond;
  const overhead = r.client.p50Us - r.rawSocketFloor.p50Us;
  return {
    throughputRatio: Number(ratio.toFixed(3)),
    p50OverheadUs: overhead,
    targets: { throughputRatioMin: 0.8, met: ratio >= 0.8, p50OverheadUsMax: 50, p50Met: overhead < 50 },
  };
};

console.log(
  JSON.stringify(
    {
      environment: benchEnvironment({
        benchmark: "fc-client",
        transport: "SocketTransport: hand-written HTTP/1.1, keep-alive pool",
        gcBetweenRounds: collectGarbage !== undefined,
        iterations: ITERATIONS,
      }),
      results,
      getRoot: verdict(results.getRoot),
      putMachineConfig: verdict(results.putMachineConfig),
    },
    null,
    2,
  ),
);
