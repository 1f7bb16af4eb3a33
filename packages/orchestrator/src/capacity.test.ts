// Admission without Firecracker: the controller's arithmetic, FIFO order, timeouts, aborts and
// releases, and an Orchestrator whose creates fail at the launch (Firecracker is /bin/true) giving
// their charge back.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  AdmissionController,
  type CapacityDemand,
  defaultReservedMemoryBytes,
  demandOf,
  type Reservation,
  resolveCapacity,
} from "./capacity.ts";
import { checkCapacity } from "./capacity-doctor.ts";
import { CONFIG_DEFAULTS, configFromEnv, createConfig } from "./config.ts";
import { OrchestratorError } from "./errors.ts";
import { importBuild } from "./import-build.ts";
import { Orchestrator } from "./orchestrator.ts";
import { openOrchestratorState } from "./orchestrator-state.ts";
import { processIdentity } from "./process-identity.ts";
import { newSandboxId } from "./sandbox-id.ts";

const MiB = 1024 * 1024;
const oneVcpu: CapacityDemand = { vcpus: 1, memoryBytes: 128 * MiB };

function controller(
  mode: "queue" | "reject" | "off" = "queue",
  limits = { vcpus: 4, memoryBytes: 1024 * MiB, sandboxes: 10 },
  queue = { queueSize: 8, queueTimeoutMs: 1000 },
) {
  return new AdmissionController(limits, { mode, ...queue });
}

async function refusal(promise: Promise<unknown>): Promise<OrchestratorError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(OrchestratorError);
  return error as OrchestratorError;
}

describe("resolveCapacity", () => {
  const config = (options: Parameters<typeof createConfig>[0] = {}) => createConfig(options);

  it("takes the host's vCPUs minus headroom times the overcommit, and memory minus headroom", () => {
    const resolved = resolveCapacity(config({ reservedVcpus: 1, reservedMemoryMib: 1024 }), () => ({
      vcpus: 8,
      memoryBytes: 16 * 1024 * MiB,
    }));
    expect(resolved.limits).toEqual({ vcpus: 28, memoryBytes: 15 * 1024 * MiB, sandboxes: 64 });
  });

  it("defaults: 4x vCPUs, 1x memory, 10% (at least 256 MiB) of memory kept for the host", () => {
    expect(CONFIG_DEFAULTS.vcpuOvercommit).toBe(4);
    expect(CONFIG_DEFAULTS.memoryOvercommit).toBe(1);
    const resolved = resolveCapacity(config(), () => ({ vcpus: 2, memoryBytes: 20 * 1024 * MiB }));
    expect(resolved.limits.vcpus).toBe(8);
    expect(resolved.reserved.memoryBytes).toBe(2 * 1024 * MiB);
    expect(defaultReservedMemoryBytes(1024 * MiB)).toBe(256 * MiB);
  });

  it("configured host sizes win and the host is not asked", () => {
    const detect = vi.fn(() => ({ vcpus: 64, memoryBytes: 1 }));
    const resolved = resolveCapacity(
      config({ hostVcpus: 3, hostMemoryMib: 2048, reservedMemoryMib: 0, vcpuOvercommit: 1.5 }),
      detect,
    );
    expect(detect).not.toHaveBeenCalled();
    expect(resolved.limits).toMatchObject({ vcpus: 4, memoryBytes: 2048 * MiB });
  });

  it("reads this host's /proc when nothing is configured", () => {
    const resolved = resolveCapacity(config());
    expect(resolved.host.vcpus).toBeGreaterThan(0);
    expect(resolved.host.memoryBytes).toBeGreaterThan(64 * MiB);
  });

  it("ratios come from the environment as decimals; a bad one is named", () => {
    expect(configFromEnv({ SBX_VCPU_OVERCOMMIT: "2.5", SBX_ADMISSION: "reject" })).toMatchObject({
      vcpuOvercommit: 2.5,
      admission: "reject",
    });
    expect(() => configFromEnv({ SBX_MEMORY_OVERCOMMIT: "lots" })).toThrow(/SBX_MEMORY_OVERCOMMIT/);
    expect(() => configFromEnv({ SBX_ADMISSION: "maybe" })).toThrow(/SBX_ADMISSION/);
  });
});

describe("demandOf", () => {
  const base = { memory: { sizeBytes: 512 * MiB, ownedBytes: 0 } };
  const ratios = { memoryOvercommit: 1, balloonMemoryOvercommit: 2 };

  it("charges the build's vCPUs and memory; a build without boot parameters one vCPU", () => {
    expect(demandOf(base, ratios)).toEqual({ vcpus: 1, memoryBytes: 512 * MiB });
    const boot = { vcpuCount: 3 } as NonNullable<Parameters<typeof demandOf>[0]["boot"]>;
    expect(demandOf({ ...base, boot }, ratios).vcpus).toBe(3);
  });

  it("a guest with a free-page-reporting balloon is packed by the balloon ratio", () => {
    const boot = {
      vcpuCount: 1,
      balloon: { freePageReporting: true, statsPollingIntervalS: 0 },
    } as NonNullable<Parameters<typeof demandOf>[0]["boot"]>;
    expect(demandOf({ ...base, boot }, ratios).memoryBytes).toBe(256 * MiB);
  });
});

describe("AdmissionController", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("admits what fits and counts it committed until released (twice is once)", async () => {
    const admission = controller();
    const a = await admission.admit(oneVcpu);
    const b = await admission.admit({ vcpus: 2, memoryBytes: 256 * MiB });
    expect(admission.snapshot()).toMatchObject({
      committed: { vcpus: 3, memoryBytes: 384 * MiB, sandboxes: 2 },
      available: { vcpus: 1, memoryBytes: 640 * MiB, sandboxes: 8 },
      admitted: 2,
    });
    a.release();
    a.release();
    b.release();
    expect(admission.snapshot().committed).toEqual({ vcpus: 0, memoryBytes: 0, sandboxes: 0 });
  });

  it("reject: a full host refuses at once, naming what is short", async () => {
    const admission = controller("reject");
    await admission.admit({ vcpus: 4, memoryBytes: 128 * MiB });
    const error = await refusal(admission.admit(oneVcpu));
    expect(error.code).toBe("CAPACITY_EXCEEDED");
    expect(error.details).toMatchObject({ reason: "full", short: ["vcpus"] });
    expect(error.message).toMatch(/vCPUs: needs 1, 0 of 4 free/);
    expect(error.message).not.toMatch(/memory:/);
    expect(admission.snapshot()).toMatchObject({ rejected: 1, queue: { length: 0 } });
  });

  it("memory that does not fit is refused before anything waits, even on an empty host", async () => {
    const admission = controller("queue");
    const error = await refusal(admission.admit({ vcpus: 1, memoryBytes: 2048 * MiB }));
    expect(error.details).toMatchObject({ reason: "too-large", short: ["memoryBytes"] });
    expect(error.message).toMatch(/memory: needs 2048 MiB, 1024 MiB of 1024 MiB free/);
    expect(admission.queueLength).toBe(0);
  });

  it("queue: strict FIFO, a large create is not overtaken by small ones behind it", async () => {
    const admission = controller();
    const first = await admission.admit({ vcpus: 3, memoryBytes: MiB });
    const order: string[] = [];
    const large = admission.admit({ vcpus: 4, memoryBytes: MiB }).then((r) => {
      order.push("large");
      return r;
    });
    // One vCPU is free, but the large create came first.
    const small = admission.admit(oneVcpu).then((r) => {
      order.push("small");
      return r;
    });
    await vi.advanceTimersByTimeAsync(10);
    expect(order).toEqual([]);
    expect(admission.snapshot().queue.length).toBe(2);
    first.release();
    const largeReservation = await large;
    expect(order).toEqual(["large"]);
    largeReservation.release();
    await small;
    expect(order).toEqual(["large", "small"]);
    expect(admission.snapshot().admitted).toBe(3);
  });

  it("queue timeout: CAPACITY_EXCEEDED with reason queue-timeout, and the queue is empty again", async () => {
    const admission = controller("queue", undefined, { queueSize: 8, queueTimeoutMs: 500 });
    await admission.admit({ vcpus: 4, memoryBytes: MiB });
    const waiting = refusal(admission.admit(oneVcpu));
    await vi.advanceTimersByTimeAsync(499);
    expect(admission.queueLength).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    const error = await waiting;
    expect(error.code).toBe("CAPACITY_EXCEEDED");
    expect(error.details).toMatchObject({ reason: "queue-timeout", short: ["vcpus"] });
    expect(error.message).toMatch(/after waiting 500 ms in the admission queue/);
    expect(admission.snapshot()).toMatchObject({ timedOut: 1, queue: { length: 0 } });
  });

  it("a full queue refuses the next create at once", async () => {
    const admission = controller("queue", undefined, { queueSize: 1, queueTimeoutMs: 1000 });
    await admission.admit({ vcpus: 4, memoryBytes: MiB });
    const waiting = admission.admit(oneVcpu).catch((e: unknown) => e);
    const error = await refusal(admission.admit(oneVcpu));
    expect(error.details).toMatchObject({ reason: "queue-full" });
    await vi.advanceTimersByTimeAsync(1000);
    await waiting;
  });

  it("abort while queued: ABORTED, removed from the queue, and the one behind it moves up", async () => {
    const admission = controller();
    const holder = await admission.admit({ vcpus: 3, memoryBytes: MiB });
    const controllerSignal = new AbortController();
    const aborted = refusal(
      admission.admit({ vcpus: 2, memoryBytes: MiB }, { signal: controllerSignal.signal }),
    );
    let behind: Reservation | undefined;
    const next = admission.admit(oneVcpu).then((r) => {
      behind = r;
    });
    await vi.advanceTimersByTimeAsync(10);
    expect(behind).toBeUndefined();
    controllerSignal.abort(new Error("caller gave up"));
    expect((await aborted).code).toBe("ABORTED");
    // The head left: the 1-vCPU create fits now.
    await next;
    expect(behind).toBeDefined();
    expect(admission.snapshot()).toMatchObject({ aborted: 1, queue: { length: 0 } });
    holder.release();
  });

  it("close: every waiting create and every later one is ABORTED, no timer left behind", async () => {
    const admission = controller();
    const holder = await admission.admit({ vcpus: 4, memoryBytes: MiB });
    const waiting = refusal(admission.admit(oneVcpu));
    admission.close();
    expect((await waiting).code).toBe("ABORTED");
    expect(vi.getTimerCount()).toBe(0);
    expect((await refusal(admission.admit(oneVcpu))).code).toBe("ABORTED");
    holder.release();
    expect(admission.snapshot().committed.sandboxes).toBe(0);
  });

  it("an already aborted signal is refused without touching the counts", async () => {
    const admission = controller();
    const error = await refusal(admission.admit(oneVcpu, { signal: AbortSignal.abort() }));
    expect(error.code).toBe("ABORTED");
    expect(admission.snapshot().committed.sandboxes).toBe(0);
  });

  it("sandbox slots count creates in flight (maxSandboxes)", async () => {
    const admission = controller("reject", { vcpus: 100, memoryBytes: 100 * 1024 * MiB, sandboxes: 2 });
    await admission.admit(oneVcpu);
    await admission.admit(oneVcpu);
    const error = await refusal(admission.admit(oneVcpu));
    expect(error.details).toMatchObject({ short: ["sandboxes"] });
    expect(error.message).toMatch(/2 of maxSandboxes 2/);
  });

  it("off: counts but never refuses", async () => {
    const admission = controller("off");
    for (let i = 0; i < 10; i++) await admission.admit({ vcpus: 4, memoryBytes: 4096 * MiB });
    expect(admission.snapshot()).toMatchObject({ committed: { vcpus: 40 }, available: { vcpus: -36 } });
  });

  it("wait times: p50 and p99 of admitted creates' time in the queue", async () => {
    let now = 0;
    const admission = new AdmissionController(
      { vcpus: 1, memoryBytes: 1024 * MiB, sandboxes: 10 },
      { mode: "queue", queueSize: 100, queueTimeoutMs: 100_000, now: () => now },
    );
    let held = await admission.admit(oneVcpu);
    const waiting = Array.from({ length: 9 }, () => admission.admit(oneVcpu));
    for (const next of waiting) {
      now += 100;
      held.release();
      held = await next;
    }
    held.release();
    // One admission at 0 ms, then waits of 100, 200, ... 900 ms.
    expect(admission.snapshot()).toMatchObject({ waitMsP50: 400, waitMsP99: 900 });
  });
});

describe("an Orchestrator's admission", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "sbx-capacity-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("a create that fails at the launch gives its charge back, and the one queued behind it gets its turn", async () => {
    // Firecracker is /bin/true: every step before the launch runs, the launch fails.
    await using orchestrator = await Orchestrator.open(
      createConfig({
        stateDir: join(dir, "state"),
        firecrackerBin: "/bin/true",
        // Firecracker is /bin/true: no VM starts, so no jailer (the explicit opt-out).
        unjailed: true,
        hostVcpus: 1,
        vcpuOvercommit: 1,
      }),
    );
    await writeFile(join(dir, "vmstate"), "vmstate");
    await writeFile(join(dir, "mem"), Buffer.alloc(64 * 1024));
    await importBuild(orchestrator.state, {
      template: "one",
      vmstate: join(dir, "vmstate"),
      memory: join(dir, "mem"),
    });
    const results = await Promise.allSettled([
      orchestrator.createSandbox({ template: "one" }),
      orchestrator.createSandbox({ template: "one" }),
    ]);
    for (const result of results) {
      expect(result.status).toBe("rejected");
      const error = (result as PromiseRejectedResult).reason as OrchestratorError;
      // Both reached the launch: the second was admitted once the first gave its vCPU back.
      expect(error.details.step).toBe("firecracker");
    }
    const { capacity } = orchestrator.metrics();
    expect(capacity).toMatchObject({
      capacity: { vcpus: 1 },
      committed: { vcpus: 0, memoryBytes: 0, sandboxes: 0 },
      admitted: 2,
      queue: { length: 0 },
    });
  });

  it("reject mode refuses at once, not after the creates ahead of it have started", async () => {
    await using orchestrator = await Orchestrator.open(
      createConfig({
        stateDir: join(dir, "state"),
        firecrackerBin: "/bin/true",
        // Firecracker is /bin/true: no VM starts, so no jailer (the explicit opt-out).
        unjailed: true,
        admission: "reject",
        hostVcpus: 1,
        vcpuOvercommit: 1,
        maxConcurrentCreates: 1,
      }),
    );
    await writeFile(join(dir, "vmstate"), "vmstate");
    await writeFile(join(dir, "mem"), Buffer.alloc(64 * 1024));
    await importBuild(orchestrator.state, {
      template: "one",
      vmstate: join(dir, "vmstate"),
      memory: join(dir, "mem"),
    });
    const order: string[] = [];
    const ended = (name: string) => (error: OrchestratorError) => {
      order.push(`${name} ${error.code}`);
    };
    await Promise.all([
      orchestrator.createSandbox({ template: "one" }).catch(ended("first")),
      orchestrator.createSandbox({ template: "one" }).catch(ended("second")),
    ]);
    // Whichever is admitted goes on to fail at the launch (no Firecracker); the other is refused at
    // once, before the admitted one gets that far (which of the two reads its build first is a race).
    expect(order.map((entry) => entry.split(" ")[1])).toEqual(["CAPACITY_EXCEEDED", "STEP_FAILED"]);
    expect(new Set(order.map((entry) => entry.split(" ")[0]))).toEqual(new Set(["first", "second"]));
    expect(orchestrator.metrics().capacity.committed.sandboxes).toBe(0);
  });

  it("reject mode: a create larger than the memory limit is refused before any step runs", async () => {
    await using orchestrator = await Orchestrator.open(
      createConfig({
        stateDir: join(dir, "state"),
        firecrackerBin: "/bin/true",
        // Firecracker is /bin/true: no VM starts, so no jailer (the explicit opt-out).
        unjailed: true,
        admission: "reject",
        hostMemoryMib: 1,
        reservedMemoryMib: 0,
      }),
    );
    await writeFile(join(dir, "vmstate"), "vmstate");
    await writeFile(join(dir, "mem"), Buffer.alloc(2 * MiB));
    await importBuild(orchestrator.state, {
      template: "big",
      vmstate: join(dir, "vmstate"),
      memory: join(dir, "mem"),
    });
    const steps: string[] = [];
    const error = await refusal(
      orchestrator.createSandbox({
        template: "big",
        onEvent: (event) => {
          if (event.kind === "step-start") steps.push(event.step);
        },
      }),
    );
    expect(error.code).toBe("CAPACITY_EXCEEDED");
    expect(error.details).toMatchObject({ reason: "too-large", short: ["memoryBytes"] });
    expect(steps).toEqual([]);
  });
});

describe("sbx doctor's capacity check", () => {
  let dir: string;
  let meminfo: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "sbx-capacity-doctor-"));
    meminfo = join(dir, "meminfo");
    await writeFile(meminfo, "MemTotal:        4194304 kB\nMemFree:  1 kB\n");
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const config = (options: Parameters<typeof createConfig>[0] = {}) =>
    createConfig({
      stateDir: join(dir, "state"),
      firecrackerBin: "/bin/true",
      unjailed: true,
      hostVcpus: 2,
      reservedMemoryMib: 0,
      ...options,
    });

  it("shows the limits and what the recorded sandboxes hold", async () => {
    const state = await openOrchestratorState(config());
    try {
      await writeFile(join(dir, "vmstate"), "vmstate");
      await writeFile(join(dir, "mem"), Buffer.alloc(2 * MiB));
      const build = await importBuild(state, {
        template: "t",
        vmstate: join(dir, "vmstate"),
        memory: join(dir, "mem"),
      });
      const owner = await processIdentity(process.pid);
      for (const recordState of ["running", "creating", "paused"] as const)
        await state.stateDir.writeRecord({
          schemaVersion: 1,
          id: newSandboxId(),
          createdAt: new Date().toISOString(),
          state: recordState,
          owner: owner!,
          processes: [],
          sockets: [],
          build: build.id,
        });
    } finally {
      await state.close();
    }
    const check = await checkCapacity(config(), meminfo);
    expect(check.status).toBe("ok");
    // Two records hold a 1-vCPU, 2 MiB build each; the paused one holds nothing.
    expect(check.summary).toMatch(/vCPUs 2 of 8 \(2 host - 0 reserved, x4\)/);
    expect(check.summary).toMatch(/memory 4 MiB of 4\.0 GiB/);
    expect(check.summary).toMatch(/sandboxes 2 of 64/);
  });

  it("warns when admission is off, fails when headroom leaves nothing, says what to set when /proc is unreadable", async () => {
    expect(await checkCapacity(config({ admission: "off" }), meminfo)).toMatchObject({
      status: "warn",
      fix: expect.stringMatching(/SBX_ADMISSION=queue/),
    });
    expect(await checkCapacity(config({ reservedVcpus: 2 }), meminfo)).toMatchObject({
      status: "fail",
      fix: expect.stringMatching(/SBX_RESERVED_VCPUS/),
    });
    expect(await checkCapacity(config({ hostVcpus: undefined }), join(dir, "none"))).toMatchObject({
      status: "warn",
      fix: expect.stringMatching(/SBX_HOST_MEMORY_MIB/),
    });
  });
});
