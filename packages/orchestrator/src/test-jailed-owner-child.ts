// A child process for the jailed owner-death test: starts three jailed sandboxes from template "guest",
// prints what it owns (pids, jails), and waits to be SIGKILLed.
import { createConfig } from "./config.ts";
import { openOrchestratorState } from "./orchestrator-state.ts";
import { createSandbox } from "./sandbox.ts";

const [stateDir, firecrackerBin, jailerBin] = process.argv.slice(2) as [string, string, string];
const state = await openOrchestratorState(createConfig({ stateDir, firecrackerBin, jailerBin }));
const sandboxes = await Promise.all(
  Array.from({ length: 3 }, () => createSandbox(state, { template: "guest", alive: /^SBX-GUEST iter=/ })),
);
const owned = await Promise.all(
  sandboxes.map(async (sandbox) => ({
    pid: sandbox.firecracker.pid,
    jail: (await state.stateDir.readRecord(sandbox.id)).jail,
  })),
);
process.stdout.write(`${JSON.stringify(owned)}\n`);
setInterval(() => {}, 1000);
