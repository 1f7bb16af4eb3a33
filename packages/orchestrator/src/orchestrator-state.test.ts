import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createConfig, type OrchestratorConfig } from "./config.ts";
import { openOrchestratorState } from "./orchestrator-state.ts";
import { processIdentity } from "./process-identity.ts";
import { StateDirectory } from "./state-dir.ts";

let root: string;
let config: OrchestratorConfig;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "sbx-open-"));
  config = createConfig({ stateDir: join(root, "state"), maxConcurrentCreates: 3 });
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("openOrchestratorState", () => {
  it("reclaims a crashed run's sandbox on start and holds the directory until closed", async () => {
    const child = spawn("sleep", ["1000"], { stdio: "ignore" });
    const exited = new Promise((resolve) => child.once("exit", (_code, signal) => resolve(signal)));
    let identity = await processIdentity(child.pid!);
    for (let i = 0; i < 200 && identity?.cmdline[0] !== "sleep"; i++) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      identity = await processIdentity(child.pid!);
    }
    const self = (await processIdentity(process.pid))!;
    const previous = await StateDirectory.open(config.stateDir);
    await previous.writeRecord({
      schemaVersion: 1,
      id: "dead00000001",
      createdAt: new Date().toISOString(),
      state: "running",
      owner: { ...self, startTime: "1" },
      processes: [{ role: "firecracker", identity: identity! }],
      sockets: [],
      networkNamespace: undefined,
    });

    const state = await openOrchestratorState(config, { graceMs: 1_000 });
    try {
      expect(await exited).toBe("SIGTERM");
      expect(state.reclaimed.reclaimed.map((r) => r.id)).toEqual(["dead00000001"]);
      expect(state.createLimiter.max).toBe(3);
      expect(state.addressPool.capacity).toBe(16384);
      await expect(openOrchestratorState(config)).rejects.toMatchObject({ code: "STATE_DIR_LOCKED" });
    } finally {
      await state.close();
    }
    await using again = await openOrchestratorState(config);
    expect(again.reclaimed.reclaimed).toEqual([]);
  });
});
