import { readFile } from "node:fs/promises";
import { z } from "zod";

/**
 * What identifies a process beyond its pid, which the kernel reuses: its start time in clock ticks
 * since boot (field 22 of /proc/<pid>/stat) and its command line.
 */
export const processIdentitySchema = z.object({
  pid: z.number().int().positive(),
  startTime: z.string().regex(/^\d+$/),
  cmdline: z.array(z.string()),
});
export type ProcessIdentity = z.infer<typeof processIdentitySchema>;

export interface ProcessStat {
  state: string;
  parentPid: number;
  startTime: string;
}

/** Parses /proc/<pid>/stat; the command name in parentheses may itself contain ") ". */
export function parseProcStat(text: string): ProcessStat | undefined {
  const end = text.lastIndexOf(")");
  if (end < 0) return undefined;
  const fields = text
    .slice(end + 2)
    .trim()
    .split(" ");
  // fields[0] is field 3 (state); field n is fields[n - 3].
  const state = fields[0];
  const parentPid = Number(fields[1]);
  const startTime = fields[19];
  if (!state || !startTime || !/^\d+$/.test(startTime) || !Number.isInteger(parentPid)) return undefined;
  return { state, parentPid, startTime };
}

export async function readProcStat(pid: number): Promise<ProcessStat | undefined> {
  try {
    return parseProcStat(await readFile(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return undefined;
  }
}

/** The identity of a running process, or undefined when it is gone (or a zombie). */
export async function processIdentity(pid: number): Promise<ProcessIdentity | undefined> {
  const stat = await readProcStat(pid);
  if (!stat || stat.state === "Z" || stat.state === "X") return undefined;
  let cmdline: string[];
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`, "utf8");
    cmdline = raw.split("\0");
    if (cmdline.at(-1) === "") cmdline.pop();
  } catch {
    return undefined;
  }
  return { pid, startTime: stat.startTime, cmdline };
}

export type IdentityCheck =
  | { alive: true; same: true }
  | { alive: false; same: false; reason: string }
  | { alive: true; same: false; reason: string };

/** Whether `recorded` is still running as the same process (not a reused pid). */
export async function checkProcessIdentity(recorded: ProcessIdentity): Promise<IdentityCheck> {
  const current = await processIdentity(recorded.pid);
  if (!current) return { alive: false, same: false, reason: `pid ${recorded.pid} is not running` };
  if (current.startTime !== recorded.startTime) {
    return {
      alive: true,
      same: false,
      reason: `pid ${recorded.pid} was reused: started at tick ${current.startTime}, recorded ${recorded.startTime}`,
    };
  }
  if (current.cmdline.join("\0") !== recorded.cmdline.join("\0")) {
    return {
      alive: true,
      same: false,
      reason: `pid ${recorded.pid} runs "${current.cmdline.join(" ")}", recorded "${recorded.cmdline.join(" ")}"`,
    };
  }
  return { alive: true, same: true };
}

async function waitForExit(pid: number, startTime: string, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const stat = await readProcStat(pid);
    if (!stat || stat.startTime !== startTime || stat.state === "Z" || stat.state === "X") return true;
    if (performance.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

export type TerminateResult =
  | { outcome: "not-running" }
  | { outcome: "not-ours"; reason: string }
  | { outcome: "terminated"; signal: "SIGTERM" | "SIGKILL" }
  | { outcome: "survived"; reason: string };

/**
 * Stops the recorded process only when it is still the same process (start time and command line),
 * with SIGTERM, then SIGKILL after `graceMs`. The check and the signal are a few microseconds apart;
 * a pid would have to be reused inside that window to hit another process.
 */
export async function terminateRecordedProcess(
  recorded: ProcessIdentity,
  options: { graceMs?: number; killTimeoutMs?: number } = {},
): Promise<TerminateResult> {
  const check = await checkProcessIdentity(recorded);
  if (!check.alive) return { outcome: "not-running" };
  if (!check.same) return { outcome: "not-ours", reason: check.reason };
  const graceMs = options.graceMs ?? 2_000;
  for (const signal of ["SIGTERM", "SIGKILL"] as const) {
    if (signal === "SIGTERM" && graceMs === 0) continue;
    try {
      process.kill(recorded.pid, signal);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ESRCH") return { outcome: "terminated", signal };
      throw error;
    }
    const timeout = signal === "SIGTERM" ? graceMs : (options.killTimeoutMs ?? 5_000);
    if (await waitForExit(recorded.pid, recorded.startTime, timeout))
      return { outcome: "terminated", signal };
  }
  return {
    outcome: "survived",
    reason: `pid ${recorded.pid} did not exit after SIGKILL (stuck in the kernel?)`,
  };
}
