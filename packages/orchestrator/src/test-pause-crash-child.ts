// A child process for the pause crash-safety test: starts a sandbox from template "guest", lets the
// guest print a line, and pauses it, SIGKILLing itself when the pause step named in argv starts.
import { createConfig } from "./config.ts";
import { openOrchestratorState } from "./orchestrator-state.ts";
import { createSandbox } from "./sandbox.ts";
import { testLaunchOptions } from "./test-launch-mode.ts";

const [stateDir, firecrackerBin, killAt] = process.argv.slice(2) as [string, string, string];
const state = await openOrchestratorState(createConfig({ stateDir, firecrackerBin, ...testLaunchOptions() }));
const sandbox = await createSandbox(state, { template: "guest", alive: /^SBX-GUEST iter=/ });
await sandbox.firecracker.waitForConsole(/^SBX-GUEST iter=/, {
  timeoutMs: 60_000,
  since: sandbox.firecracker.console.position,
});
const paused = await sandbox.pause({
  onEvent: (event) => {
    if (event.kind === "step-start" && event.step === killAt) process.kill(process.pid, "SIGKILL");
  },
});
process.stdout.write(`${JSON.stringify(paused)}\n`);
await state.close();
