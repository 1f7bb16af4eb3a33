// How much host memory a sandbox holds, and how much it gave back. The page-fault server counts the
// REMOVE events a balloon causes (Firecracker madvise(MADV_DONTNEED)s the ranges the guest reports
// free); the kernel counts what that did to Firecracker's resident memory. Reclaimed is the drop from
// the peak: the bytes the host got back, whoever freed them.
import { readFile } from "node:fs/promises";
import type { PageFaultMetrics } from "@sbx/uffd";
import { OrchestratorError } from "./errors.ts";

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
