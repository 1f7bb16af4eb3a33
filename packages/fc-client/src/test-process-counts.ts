import { readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";

/** Open fds of this process. */
export function fdCount(): number {
  return readdirSync("/proc/self/fd").length;
}

/** Pids whose parent is this process (zombies included: they still have a /proc entry). */
export function childPids(): number[] {
  const out: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(fields[1]) === process.pid) out.push(Number(entry));
    } catch {
      // the process went away while we looked
    }
  }
  return out;
}

/** A process's state letter from /proc (R, S, Z for a zombie...), or undefined once it is reaped. */
export function processState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
  } catch {
    return undefined;
  }
}

/** The launcher's temp dirs (`sbx-fc-<id>-*`) for VM ids starting with `idPrefix`. */
export function launcherTempDirs(idPrefix: string): string[] {
  return readdirSync(tmpdir()).filter((name) => name.startsWith(`sbx-fc-${idPrefix}`));
}

export async function settle(ms = 50): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * The fd count once it reaches `expected`, or after `withinMs` whatever it is then: closing a socket
 * completes on a later event-loop turn, later still on a loaded machine. A leak never settles.
 */
export async function settledFdCount(expected: number, withinMs = 2000): Promise<number> {
  const deadline = performance.now() + withinMs;
  for (;;) {
    const count = fdCount();
    if (count === expected || performance.now() > deadline) return count;
    await settle(10);
  }
}
