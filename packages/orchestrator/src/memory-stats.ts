// How much host memory a sandbox holds, and how much it gave back. The page-fault server counts the
// REMOVE events a balloon causes (Firecracker madvise(MADV_DONTNEED)s the ranges the guest reports
// free); the kernel counts what that did to Firecracker's resident memory. Reclaimed is the drop from
// the peak: the bytes the host got back, whoever freed them.
import { readFile } from "node:fs/promises";
import type { PageFaultMetrics } from "@sbx/uffd";
import { OrchestratorError } from "./errors.ts";
import { checkProcessIdentity } from "./process-identity.ts";
import type { SandboxRecord } from "./state-dir.ts";

export interface ProcessMemory {
  /** VmRSS: resident now. */
  residentBytes: number;
  /** VmHWM: the most it was ever resident. */
  peakResidentBytes: number;
}

/** A process's resident memory now and at its peak, from /proc/{pid}/status. */
export async function readProcessMemory(pid: number, procRoot = "/proc"): Promise<ProcessMemory> {
  let status: string;
  try {
    status = await readFile(`${procRoot}/${pid}/status`, "utf8");
  } catch (cause) {
    throw new OrchestratorError("NOT_AVAILABLE", `process ${pid} is gone: no memory to report`, { cause });
  }
  return parseProcessMemory(status, pid);
}

export function parseProcessMemory(status: string, pid: number): ProcessMemory {
  const field = (name: string) => {
    const kib = new RegExp(`^${name}:\\s+(\\d+) kB$`, "m").exec(status)?.[1];
    if (kib === undefined)
      throw new OrchestratorError("NOT_AVAILABLE", `/proc/${pid}/status has no ${name} (a kernel thread?)`);
    return Number(kib) * 1024;
  };
  return { residentBytes: field("VmRSS"), peakResidentBytes: field("VmHWM") };
}

export interface SandboxMemoryStats extends ProcessMemory {
  /** The guest's memory size. */
  guestBytes: number;
  /** Whether the build's VM has a balloon with free page reporting. */
  balloon: boolean;
  /** Resident bytes Firecracker gave back since its peak (peak - resident). */
  reclaimedBytes: number;
  /** REMOVE events the page-fault server applied: ranges the balloon freed. */
  removeEvents: number;
  /** Faults served with zeros: pages touched again after a REMOVE. */
  zeroPages: number;
}

export function sandboxMemoryStats(
  memory: ProcessMemory,
  server: Pick<PageFaultMetrics, "removes" | "zeroPages">,
  guest: { guestBytes: number; balloon: boolean },
): SandboxMemoryStats {
  return {
    ...guest,
    ...memory,
    reclaimedBytes: Math.max(0, memory.peakResidentBytes - memory.residentBytes),
    removeEvents: server.removes,
    zeroPages: server.zeroPages,
  };
}

/** One recorded sandbox's Firecracker, seen from outside the process that owns the sandbox. */
export interface RecordedSandboxMemory extends ProcessMemory {
  id: string;
  /** Resident bytes its Firecracker gave back since its peak (peak - resident). */
  reclaimedBytes: number;
}

/**
 * Resident and reclaimed memory of the Firecracker of every running sandbox in `records`, whichever
 * process owns it (what `sbx doctor` can see: REMOVE counts live in the owner's page-fault server, the
 * kernel's counters are readable by anyone). A record whose Firecracker is gone, or whose pid now runs
 * something else, is left out: its numbers would be another process's.
 */
export async function recordedSandboxesMemory(
  records: readonly SandboxRecord[],
): Promise<RecordedSandboxMemory[]> {
  const out: RecordedSandboxMemory[] = [];
  for (const record of records) {
    if (record.state !== "running") continue;
    const firecracker = record.processes.find((p) => p.role === "firecracker")?.identity;
    if (!firecracker || !(await checkProcessIdentity(firecracker)).same) continue;
    const memory = await readProcessMemory(firecracker.pid).catch(() => undefined);
    if (!memory) continue;
    out.push({
      id: record.id,
      ...memory,
      reclaimedBytes: Math.max(0, memory.peakResidentBytes - memory.residentBytes),
    });
  }
  return out;
}

export interface MemoryTotals {
  sandboxes: number;
  residentBytes: number;
  reclaimedBytes: number;
}

/** Sums over sandboxes: what their Firecrackers hold now, and what they gave back. */
export function memoryTotals(
  sandboxes: readonly { residentBytes: number; reclaimedBytes: number }[],
): MemoryTotals {
  return {
    sandboxes: sandboxes.length,
    residentBytes: sandboxes.reduce((sum, s) => sum + s.residentBytes, 0),
    reclaimedBytes: sandboxes.reduce((sum, s) => sum + s.reclaimedBytes, 0),
  };
}

/**
 * Every live sandbox's memory stats by id, and their totals: what an orchestrator reports for the
 * sandboxes it owns. A sandbox that went away while being read is left out.
 */
export async function sandboxesMemoryStats(
  sandboxes: Iterable<{ id: string; memoryStats(): Promise<SandboxMemoryStats> }>,
): Promise<{ sandboxes: (SandboxMemoryStats & { id: string })[]; totals: MemoryTotals }> {
  const out: (SandboxMemoryStats & { id: string })[] = [];
  for (const sandbox of sandboxes) {
    const stats = await sandbox.memoryStats().catch((error: unknown) => {
      if (error instanceof OrchestratorError && error.code === "NOT_AVAILABLE") return undefined;
      throw error;
    });
    if (stats) out.push({ id: sandbox.id, ...stats });
  }
  return { sandboxes: out, totals: memoryTotals(out) };
}
