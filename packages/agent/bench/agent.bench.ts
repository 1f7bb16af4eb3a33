// Prints JSON: commands.run("true") round trip p50/p99 and stdout throughput for 256 MiB, through the
// agent (AgentClient over TCP into the agent's network namespace) and, in the same run against the
// same namespace, through a raw socket: bench/raw-exec.c started inside the namespace, running the
// same argv with its stdout connected straight to the socket. Targets: round trip within 2 ms of the
// raw socket; throughput >= 0.8 of it. Needs root, unshare and ip; otherwise prints `skipped`.
// Throughput is reported as each side's best run (`ratio`, as before) and as the median over rounds of
// agent/raw measured back to back (`medianRoundRatio`), which other work on a shared machine moves least.
// A third side, `forwarder` (raw-exec --pipe), is the least any server pays that keeps a pipe between the
// command and the socket, as the agent must; agent/forwarder is the agent's own cost. Each side's CPU
// per stage (command, forwarder, host consumer) comes from /proc, and `projected` says what each side
// would reach with a CPU per stage, as a guest's vCPUs are apart from the host's: a model, not a run.
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostArch } from "@sbx/arch";
import { benchEnvironment } from "../../../scripts/bench-environment.ts";
import { ensureAgentBinary } from "../src/agent-binary.ts";
import { AgentClient } from "../src/client.ts";
import { namespacedAgentUnavailable, settle, startNamespacedAgent } from "../src/testing/namespaced-agent.ts";

const ROUND_TRIPS = Number(process.env.BENCH_ROUND_TRIPS ?? 300);
const STREAM_BYTES = Number(process.env.BENCH_STREAM_MIB ?? 256) << 20;
const REPEATS = Number(process.env.BENCH_REPEATS ?? 5);
const RAW_PORT = 5001;
const FORWARDER_PORT = 5002;
/** USER_HZ: the unit of utime/stime in /proc/<pid>/stat (100 on every Linux Node supports). */
const CLOCK_TICKS = 100;

const unavailable = namespacedAgentUnavailable();
if (unavailable) {
  console.log(JSON.stringify({ ...benchEnvironment(), benchmark: "agent", skipped: unavailable }, null, 2));
  process.exit(0);
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

/** One persistent connection to raw-exec: send argv, read until the status byte after `expect` bytes. */
class RawClient {
  readonly #socket: Socket;
  #pending: { expect: number; got: number; resolve: () => void } | undefined;
  constructor(socket: Socket) {
    this.#socket = socket;
    socket.on("data", (chunk: Buffer) => {
      const pending = this.#pending;
      if (!pending) return;
      pending.got += chunk.length;
      if (pending.got >= pending.expect + 1) {
        this.#pending = undefined;
        pending.resolve();
      }
    });
  }
  static open(host: string, port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host, port, noDelay: true });
      socket.once("connect", () => resolve(new RawClient(socket)));
      socket.once("error", reject);
    });
  }
  run(argv: string[], expect: number): Promise<void> {
    return new Promise((resolve) => {
      this.#pending = { expect, got: 0, resolve };
      this.#socket.write(`${argv.join(" ")}\n`);
    });
  }
  close(): void {
    this.#socket.destroy();
  }
}

const binary = await ensureAgentBinary(hostArch());
const work = mkdtempSync(join(tmpdir(), "sbx-agent-bench-"));
const rawBinary = join(work, "raw-exec");
execFileSync("gcc", [
  "-O2",
  "-static",
  "-march=x86-64",
  "-o",
  rawBinary,
  join(import.meta.dirname, "raw-exec.c"),
]);
await using agent = await startNamespacedAgent({ agent: binary.path });
copyFileSync(rawBinary, join(agent.root, ".sbx/raw-exec"));
await using client = new AgentClient(agent.tcp(), {
  window: Number(process.env.BENCH_WINDOW_MIB ?? 4) << 20,
});
const server = await client.commands.start(["/.sbx/raw-exec", String(RAW_PORT)], { stdin: false });
const forwardServer = await client.commands.start(["/.sbx/raw-exec", String(FORWARDER_PORT), "--pipe"], {
  stdin: false,
});
async function openRaw(port: number): Promise<RawClient> {
  const opened = await settle(
    () => RawClient.open(agent.guestAddress, port).catch(() => undefined),
    (c) => c !== undefined,
    10_000,
  );
  if (!opened) throw new Error(`raw-exec on port ${port} did not start in the namespace`);
  return opened;
}
const raw = await openRaw(RAW_PORT);
const forwarder = await openRaw(FORWARDER_PORT);

/** The host pid of the process in the agent's root whose argv starts with `argv`. */
function hostPid(argv: string[]): number {
  const wanted = `${argv.join("\0")}\0`;
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readlinkSync(`/proc/${entry}/root`) !== agent.root) continue;
      if (readFileSync(`/proc/${entry}/cmdline`, "latin1").startsWith(wanted)) return Number(entry);
    } catch {
      // The process exited while we looked.
    }
  }
  throw new Error(`no process ${argv.join(" ")} in ${agent.root}`);
}

/** CPU seconds of a process itself and of its reaped children (the commands it ran and waited for). */
function cpuOf(pid: number): { own: number; children: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
  const fields = stat
    .slice(stat.lastIndexOf(")") + 2)
    .split(" ")
    .map(Number);
  // Fields 14..17 of stat(5), counted from the state field (3) after the command name.
  const [utime, stime, cutime, cstime] = fields.slice(11, 15) as [number, number, number, number];
  return { own: (utime + stime) / CLOCK_TICKS, children: (cutime + cstime) / CLOCK_TICKS };
}
const processes = {
  agent: hostPid(["/.sbx/agent"]),
  raw: hostPid(["/.sbx/raw-exec", String(RAW_PORT)]),
  forwarder: hostPid(["/.sbx/raw-exec", String(FORWARDER_PORT), "--pipe"]),
};

/** Alternates the two sides sample by sample, so both see the same machine load. */
async function roundTrips(
  sides: Record<"agent" | "raw", () => Promise<unknown>>,
): Promise<Record<"agent" | "raw", { p50Ms: number; p99Ms: number }>> {
  const times = { agent: [] as number[], raw: [] as number[] };
  for (let i = 0; i < 20; i++) for (const run of Object.values(sides)) await run();
  for (let i = 0; i < ROUND_TRIPS; i++) {
    for (const side of ["agent", "raw"] as const) {
      const start = performance.now();
      await sides[side]();
      times[side].push(performance.now() - start);
    }
  }
  const summary = (list: number[]) => {
    list.sort((a, b) => a - b);
    return { p50Ms: +percentile(list, 50).toFixed(3), p99Ms: +percentile(list, 99).toFixed(3) };
  };
  return { agent: summary(times.agent), raw: summary(times.raw) };
}

const streamArgv = ["dd", "if=/dev/zero", "bs=1M", `count=${STREAM_BYTES >> 20}`, "status=none"];
/** CPU seconds a side spent in each stage of its data path: the command, the server between it and
 * the socket (none for raw), and the host consumer (this Node process). */
interface StageCpu {
  command: number;
  forwarder: number;
  consumer: number;
}
/**
 * REPEATS rounds, each running every side once in turn, so a side's run and the raw run of its round
 * see about the same machine load. Reported: each side's best and median, the median over rounds of
 * agent/raw within the round (the figure least moved by other work on the machine), and CPU by stage.
 */
const SIDES = ["agent", "agentCallback", "forwarder", "raw"] as const;
type StreamSide = (typeof SIDES)[number];
/** Which process is the server of a side: its own CPU is the forwarder stage, its children's the command. */
const serverOf: Record<StreamSide, number> = {
  agent: processes.agent,
  agentCallback: processes.agent,
  forwarder: processes.forwarder,
  raw: processes.raw,
};
async function throughput(sides: Record<StreamSide, () => Promise<number>>) {
  const rounds: Record<StreamSide, number>[] = [];
  const cpu = Object.fromEntries(
    SIDES.map((side) => [side, { command: 0, forwarder: 0, consumer: 0 }]),
  ) as Record<StreamSide, StageCpu>;
  // One unmeasured round first: the first 256 MiB of each side also pays for JIT and allocator warm-up.
  for (const side of SIDES) await sides[side]();
  for (let i = 0; i < REPEATS; i++) {
    const round = { agent: 0, agentCallback: 0, forwarder: 0, raw: 0 };
    for (const side of SIDES) {
      const serverBefore = cpuOf(serverOf[side]);
      const consumerBefore = process.cpuUsage();
      const start = performance.now();
      const bytes = await sides[side]();
      if (bytes !== STREAM_BYTES)
        throw new Error(`${side}: received ${bytes} bytes, expected ${STREAM_BYTES}`);
      round[side] = bytes / ((performance.now() - start) / 1000) / (1 << 20);
      const consumer = process.cpuUsage(consumerBefore);
      const serverAfter = cpuOf(serverOf[side]);
      cpu[side].command += serverAfter.children - serverBefore.children;
      if (side !== "raw") cpu[side].forwarder += serverAfter.own - serverBefore.own;
      cpu[side].consumer += (consumer.user + consumer.system) / 1e6;
    }
    rounds.push(round);
  }
  const median = (values: number[]) => {
    const sorted = [...values].sort((a, b) => a - b);
    const middle = sorted.length >> 1;
    return sorted.length % 2
      ? (sorted[middle] as number)
      : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
  };
  const of = (side: StreamSide) => rounds.map((round) => round[side]);
  const best = (side: StreamSide) => +Math.max(...of(side)).toFixed(1);
  const roundRatio = (side: StreamSide, against: StreamSide) =>
    +median(rounds.map((round) => round[side] / round[against])).toFixed(3);
  const mib = (STREAM_BYTES * REPEATS) / (1 << 20);
  /**
   * Per side: CPU ms per MiB by stage, and the MiB/s the slowest stage could move with a CPU of its
   * own: over every stage, and over the guest's stages only (in a real guest, Firecracker copies the
   * bytes out of guest memory, so the host consumer's cost does not depend on the guest's path).
   */
  const stages = Object.fromEntries(
    SIDES.map((side) => {
      const perStage = Object.entries(cpu[side]).filter(([stage]) => side !== "raw" || stage !== "forwarder");
      const ceilings = perStage.map(
        ([stage, seconds]) => [stage, seconds > 0 ? mib / seconds : Infinity] as const,
      );
      return [
        side,
        {
          cpuMsPerMiB: Object.fromEntries(
            perStage.map(([stage, seconds]) => [stage, +((seconds * 1000) / mib).toFixed(3)]),
          ),
          projectedMiBps: +Math.min(...ceilings.map(([, ceiling]) => ceiling)).toFixed(0),
          limitedBy: ceilings.reduce((low, next) => (next[1] < low[1] ? next : low))[0],
          guestProjectedMiBps: +Math.min(
            ...ceilings.filter(([stage]) => stage !== "consumer").map(([, ceiling]) => ceiling),
          ).toFixed(0),
        },
      ];
    }),
  ) as Record<
    StreamSide,
    {
      cpuMsPerMiB: Record<string, number>;
      projectedMiBps: number;
      limitedBy: string;
      guestProjectedMiBps: number;
    }
  >;
  return {
    best: Object.fromEntries(SIDES.map((side) => [side, best(side)])) as Record<StreamSide, number>,
    median: Object.fromEntries(SIDES.map((side) => [side, +median(of(side)).toFixed(1)])),
    roundRatios: rounds.map((round) => +(round.agent / round.raw).toFixed(3)),
    medianRoundRatio: roundRatio("agent", "raw"),
    medianRoundCallbackRatio: roundRatio("agentCallback", "raw"),
    medianRoundForwarderRatio: roundRatio("forwarder", "raw"),
    medianRoundAgentToForwarder: roundRatio("agent", "forwarder"),
    stages,
    projectedRatio: +(stages.agent.projectedMiBps / stages.raw.projectedMiBps).toFixed(3),
    guestProjectedRatio: +(stages.agent.guestProjectedMiBps / stages.raw.guestProjectedMiBps).toFixed(3),
  };
}

const roundTrip = await roundTrips({
  agent: () => client.commands.run(["true"]),
  raw: () => raw.run(["true"], 0),
});
const agentRoundTrip = roundTrip.agent;
const rawRoundTrip = roundTrip.raw;
const streamed = await throughput({
  agent: async () => {
    const handle = await client.commands.start(streamArgv, { stdin: false });
    let bytes = 0;
    for await (const chunk of handle.stdout) bytes += chunk.length;
    await handle.wait();
    return bytes;
  },
  agentCallback: async () => {
    let bytes = 0;
    const handle = await client.commands.start(streamArgv, {
      stdin: false,
      onStdout: (chunk) => {
        bytes += chunk.length;
      },
    });
    await handle.wait();
    return bytes;
  },
  forwarder: async () => {
    await forwarder.run(streamArgv, STREAM_BYTES);
    return STREAM_BYTES;
  },
  raw: async () => {
    await raw.run(streamArgv, STREAM_BYTES);
    return STREAM_BYTES;
  },
});
const agentMiBps = streamed.best.agent;
const agentCallbackMiBps = streamed.best.agentCallback;
const rawMiBps = streamed.best.raw;
const loadAverage = readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).map(Number);

raw.close();
forwarder.close();
for (const handle of [server, forwardServer]) {
  await handle.kill();
  await handle.wait().catch(() => undefined);
}
rmSync(work, { recursive: true, force: true });

const roundTripOverheadMs = +(agentRoundTrip.p50Ms - rawRoundTrip.p50Ms).toFixed(3);
const throughputRatio = +(agentMiBps / rawMiBps).toFixed(3);
console.log(
  JSON.stringify(
    {
      ...benchEnvironment(),
      benchmark: "agent",
      loadAverage,
      transport: "tcp into the agent's network namespace (veth)",
      roundTrip: {
        command: ["true"],
        samples: ROUND_TRIPS,
        agent: agentRoundTrip,
        raw: rawRoundTrip,
        overheadP50Ms: roundTripOverheadMs,
        targetMs: 2,
        met: roundTripOverheadMs <= 2,
      },
      stdout: {
        command: streamArgv,
        bytes: STREAM_BYTES,
        repeats: REPEATS,
        // agentMiBps, rawMiBps and ratio: each side's best run, as in earlier versions of this bench.
        agentMiBps,
        agentCallbackMiBps,
        rawMiBps,
        ratio: throughputRatio,
        callbackRatio: +(agentCallbackMiBps / rawMiBps).toFixed(3),
        medianMiBps: streamed.median,
        roundRatios: streamed.roundRatios,
        medianRoundRatio: streamed.medianRoundRatio,
        medianRoundCallbackRatio: streamed.medianRoundCallbackRatio,
        // The same command through raw-exec --pipe: a bare splice loop, no framing, no protocol.
        forwarderMiBps: streamed.best.forwarder,
        medianRoundForwarderRatio: streamed.medianRoundForwarderRatio,
        medianRoundAgentToForwarder: streamed.medianRoundAgentToForwarder,
        stages: streamed.stages,
        projectedRatio: streamed.projectedRatio,
        guestProjectedRatio: streamed.guestProjectedRatio,
        target: 0.8,
        met: throughputRatio >= 0.8,
        medianRoundMet: streamed.medianRoundRatio >= 0.8,
      },
    },
    null,
    2,
  ),
);
