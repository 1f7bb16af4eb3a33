// A child process for the crash-safety tests: builds template "base" without a VM (snapshot-shaped
// files stand in) and SIGKILLs itself when the step named in argv starts. Run by crash-safety.test.ts.
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createConfig } from "./config.ts";
import { openOrchestratorState } from "./orchestrator-state.ts";
import type { Step } from "./steps.ts";
import { buildTemplate, type TemplateBuildContext } from "./template-build.ts";
import { BUILD_FILES } from "./template-manifest.ts";
import { testResolver } from "./test-template-fixture.ts";

const [stateDir, busyboxDir, layoutDir, killAt, marker] = process.argv.slice(2) as [
  string,
  string,
  string,
  string,
  string,
];
const fakeSnapshot: Step<TemplateBuildContext> = {
  name: "snapshot",
  async run(context) {
    await writeFile(join(context.stagingDir, BUILD_FILES.vmstate), marker);
    await writeFile(
      join(context.stagingDir, BUILD_FILES.memory),
      Buffer.alloc(256 * 1024, marker.charCodeAt(0)),
    );
  },
};
const state = await openOrchestratorState(createConfig({ stateDir, busyboxDir }));
await buildTemplate(state, {
  request: { name: "base", ociLayout: layoutDir, network: false, memoryMib: 64, vcpuCount: 1 },
  resolver: testResolver("/bin/true"),
  steps: (steps) =>
    steps.remove("provision").remove("boot").remove("wait-ready").replace("snapshot", fakeSnapshot),
  onEvent: (event) => {
    if (event.kind === "step-start" && event.step === killAt) process.kill(process.pid, "SIGKILL");
  },
});
await state.close();
