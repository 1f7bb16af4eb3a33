import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AddressPool } from "./address-pool.ts";
import { CONFIG_DEFAULTS } from "./config.ts";
import { createNetworkNamespace, listLinks, listNetworkNamespaces } from "./network.ts";
import { type ProcessIdentity, processIdentity } from "./process-identity.ts";
import { reclaim } from "./reclaim.ts";
import { type SandboxRecord, StateDirectory } from "./state-dir.ts";
import { childPids, networkSkipReason, openFdCount, testAddressIndex } from "./test-capabilities.ts";

let root: string;
let state: StateDirectory;
const spawned: ChildProcess[] = [];

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "sbx-reclaim-"));
  state = await StateDirectory.open(root);
});
afterEach(async () => {
  for (const child of spawned.splice(0)) child.kill("SIGKILL");
  await rm(root, { recursive: true, force: true });
});

async function startSleep(): Promise<{
  child: ChildProcess;
  identity: ProcessIdentity;
  exited: Promise<unknown>;
}> {
  const child = spawn("sleep", ["1000"], { stdio: "ignore" });
  spawned.push(child);
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve(signal ?? code)));
  await new Promise((resolve, reject) => {
    child.once("spawn", resolve);
    child.once("error", reject);
  });
  // Wait until exec has replaced the forked node image, so the cmdline is sleep's.
  for (let i = 0; i < 200; i++) {
    const identity = await processIdentity(child.pid!);
    if (identity?.cmdline[0] === "sleep") return { child, identity, exited };
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  throw new Error("sleep did not start");
}

/** The identity of an orchestrator that has crashed: a process that ran and exited. */
async function deadOwner(): Promise<ProcessIdentity> {
  const child = spawn("true", [], { stdio: "ignore" });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  await new Promise((resolve) => child.once("spawn", resolve));
  const identity = (await processIdentity(child.pid!)) ?? {
    pid: child.pid!,
    startTime: "1",
    cmdline: ["true"],
  };
  await exited;
  return identity;
}

function recordOf(id: string, owner: ProcessIdentity, extra: Partial<SandboxRecord> = {}): SandboxRecord {
  return {
    schemaVersion: 1,
    id,
    createdAt: new Date().toISOString(),
    state: "running",
    owner,
    processes: [],
    sockets: [],
    ...extra,
  };
}

describe("reclaim", () => {
  it("kills a crashed run's recorded process, removes its sockets and directory", async () => {
    const fdsBefore = openFdCount();
    const sleeper = await startSleep();
    const socket = join(root, "sandboxes", "abc123", "api.sock");
    await state.writeRecord(
      recordOf("abc123", await deadOwner(), {
        processes: [{ role: "firecracker", identity: sleeper.identity }],
        sockets: [socket],
      }),
    );
    await writeFile(socket, "");
    await writeFile(join(root, "sandboxes", "abc123", "sandbox.json.tmp-1-dead"), "{");

    const report = await reclaim(state, { graceMs: 1_000 });

    expect(await sleeper.exited).toBe("SIGTERM");
    expect(report.reclaimed).toEqual([
      expect.objectContaining({
        id: "abc123",
        processes: [
          {
            role: "firecracker",
            pid: sleeper.identity.pid,
            result: { outcome: "terminated", signal: "SIGTERM" },
          },
        ],
        removedSockets: [socket],
        removedDirectory: true,
        errors: [],
      }),
    ]);
    expect(await readdir(join(root, "sandboxes"))).toEqual([]);
    expect(childPids()).not.toContain(sleeper.identity.pid);
    expect(openFdCount()).toBe(fdsBefore);
  });

  it("does not kill a process whose pid was reused (start time differs)", async () => {
    const sleeper = await startSleep();
    await state.writeRecord(
      recordOf("def456", await deadOwner(), {
        processes: [{ role: "firecracker", identity: { ...sleeper.identity, startTime: "1" } }],
      }),
    );
    const report = await reclaim(state, { graceMs: 200 });
    expect(report.reclaimed[0]?.processes[0]?.result).toMatchObject({ outcome: "not-ours" });
    expect(await processIdentity(sleeper.identity.pid)).toEqual(sleeper.identity);
  });

  it("does not kill a process whose command line differs", async () => {
    const sleeper = await startSleep();
    await state.writeRecord(
      recordOf("cafe01", await deadOwner(), {
        processes: [
          { role: "page-fault-server", identity: { ...sleeper.identity, cmdline: ["firecracker"] } },
        ],
      }),
    );
    const report = await reclaim(state, { graceMs: 200 });
    expect(report.reclaimed[0]?.processes[0]?.result).toMatchObject({ outcome: "not-ours" });
    expect(await processIdentity(sleeper.identity.pid)).toEqual(sleeper.identity);
  });

  it("escalates to SIGKILL when SIGTERM is ignored, Firecracker before the page-fault server", async () => {
    const stubborn = spawn(
      process.execPath,
      ["-e", "process.on('SIGTERM', () => {}); console.log('ready'); setInterval(() => {}, 1000);"],
      { stdio: ["ignore", "pipe", "ignore"] },
    );
    spawned.push(stubborn);
    const exited = new Promise((resolve) => stubborn.once("exit", (_code, signal) => resolve(signal)));
    // Only once it printed "ready" is its SIGTERM handler installed.
    await new Promise((resolve) => stubborn.stdout?.once("data", resolve));
    stubborn.stdout?.destroy();
    const stubbornIdentity = (await processIdentity(stubborn.pid!))!;
    const server = await startSleep();
    await state.writeRecord(
      recordOf("beef02", await deadOwner(), {
        processes: [
          { role: "page-fault-server", identity: server.identity },
          { role: "firecracker", identity: stubbornIdentity },
        ],
      }),
    );
    const report = await reclaim(state, { graceMs: 200 });
    expect(await exited).toBe("SIGKILL");
    expect(await server.exited).toBe("SIGTERM");
    expect(report.reclaimed[0]?.processes.map((p) => [p.role, p.result])).toEqual([
      ["firecracker", { outcome: "terminated", signal: "SIGKILL" }],
      ["page-fault-server", { outcome: "terminated", signal: "SIGTERM" }],
    ]);
  });

  it("leaves sandboxes of a live owner and broken records alone", async () => {
    const sleeper = await startSleep();
    const self = (await processIdentity(process.pid))!;
    await state.writeRecord(
      recordOf("aaa001", self, { processes: [{ role: "firecracker", identity: sleeper.identity }] }),
    );
    await state.createSandboxDir("bbb002");
    const report = await reclaim(state);
    expect(report.reclaimed).toEqual([]);
    expect(report.skipped).toEqual([{ id: "aaa001", reason: expect.stringContaining(String(process.pid)) }]);
    expect(report.invalid.map((i) => i.id)).toEqual(["bbb002"]);
    expect(await processIdentity(sleeper.identity.pid)).toEqual(sleeper.identity);
  });

  const skip = networkSkipReason();
  it.skipIf(skip)(
    `removes a crashed run's network namespace${skip ? ` (skipped: ${skip})` : ""}`,
    async () => {
      const pool = new AddressPool(CONFIG_DEFAULTS.hostAddressPool);
      const index = testAddressIndex(3);
      const namespace = await createNetworkNamespace({
        name: `sbxt${process.pid}-r`,
        hostVethName: `st${process.pid}r`,
        addresses: pool.addressesFor(index),
        tapName: CONFIG_DEFAULTS.tapName,
        tapAddress: CONFIG_DEFAULTS.tapAddress,
        guestAddress: CONFIG_DEFAULTS.guestAddress,
      });
      try {
        await state.writeRecord(
          recordOf("net001", await deadOwner(), {
            networkNamespace: { ...namespace.ref, addressIndex: index },
          }),
        );
        const report = await reclaim(state);
        // removedRules depends on whether the shared host table exists: another test may have made it.
        expect(report.reclaimed[0]?.network).toEqual({
          name: namespace.name,
          removedRules: expect.any(Boolean),
          removedLink: true,
          removedNamespace: true,
        });
        expect(await listNetworkNamespaces()).not.toContain(namespace.name);
        expect(await listLinks()).not.toContain(namespace.hostVethName);
      } finally {
        await namespace.teardown();
      }
    },
  );
});
