import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createConfig } from "./config.ts";
import { listLinks, listNetworkNamespaces } from "./network.ts";
import { type OrchestratorState, openOrchestratorState } from "./orchestrator-state.ts";
import { reclaim } from "./reclaim.ts";
import { networkStep, newSandboxCreateContext, stateRecordStep } from "./sandbox-steps.ts";
import { runSteps, StepList } from "./steps.ts";
import { networkSkipReason } from "./test-capabilities.ts";

const skip = networkSkipReason();
if (skip) console.log(`sandbox network step tests skipped: ${skip}`);

let root: string;
let state: OrchestratorState;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "sbx-steps-"));
  // A pool of its own (10.200.192.0/20 is not used by the other tests) keeps the host veth names unique.
  state = await openOrchestratorState(
    createConfig({ stateDir: join(root, "state"), hostAddressPool: "10.200.192.0/20" }),
  );
  for (let i = 0; i < (process.pid % 500) * 2; i++) state.addressPool.allocate();
});
afterEach(async () => {
  await state.close();
  await rm(root, { recursive: true, force: true });
});

const steps = new StepList([stateRecordStep(), networkStep()]);

describe.skipIf(skip)(`sandbox-create steps${skip ? ` (skipped: ${skip})` : ""}`, () => {
  it("records the sandbox and its namespace, and removes both on dispose", async () => {
    const inUse = state.addressPool.inUse;
    const context = newSandboxCreateContext(state, { template: "base" });
    {
      await using _created = await runSteps(steps, context);
      const record = await state.stateDir.readRecord(context.sandboxId);
      expect(record).toMatchObject({ state: "creating", template: "base", owner: state.self });
      expect(record.networkNamespace?.name).toBe(`sbx-${context.sandboxId}`);
      expect(await listNetworkNamespaces()).toContain(context.network?.name);
      expect(state.addressPool.inUse).toBe(inUse + 1);
    }
    expect(await listNetworkNamespaces()).not.toContain(context.network?.name);
    expect(await listLinks()).not.toContain(context.network?.hostVethName);
    expect((await state.stateDir.listSandboxes()).records).toEqual([]);
    expect(state.addressPool.inUse).toBe(inUse);
  });

  it("leaves nothing when a later step fails", async () => {
    const context = newSandboxCreateContext(state);
    const failing = steps.append({
      name: "launch",
      run: () => {
        throw new Error("firecracker exited during create");
      },
    });
    await expect(runSteps(failing, context)).rejects.toMatchObject({ code: "STEP_FAILED" });
    expect(await listNetworkNamespaces()).not.toContain(context.network?.name);
    expect((await state.stateDir.listSandboxes()).records).toEqual([]);
  });

  it("leaves a record from which a later start reclaims the namespace after a crash", async () => {
    const context = newSandboxCreateContext(state);
    await runSteps(steps, context); // never disposed: the orchestrator "crashed"
    const record = await state.stateDir.readRecord(context.sandboxId);
    await state.stateDir.writeRecord({ ...record, owner: { ...record.owner, startTime: "1" } });
    const report = await reclaim(state.stateDir);
    expect(report.reclaimed[0]).toMatchObject({
      id: context.sandboxId,
      network: { removedLink: true, removedNamespace: true },
      removedDirectory: true,
    });
    expect(await listNetworkNamespaces()).not.toContain(context.network?.name);
  });
});
