import { readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";

export { childPids } from "@sbx/arch/testing";

/** Open fds of this process. */
export function fdCount(): number {
  return readdirSync("/proc/self/fd").length;
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
