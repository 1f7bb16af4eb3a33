// Process and fd counts for tests that own children or fds, shared by every sbx package's tests.
import type { ChildProcess } from "node:child_process";
import { accessSync, constants, readdirSync, readFileSync, readlinkSync } from "node:fs";

/** Open fds of this process. */
export function openFdCount(): number {
  return readdirSync("/proc/self/fd").length;
}

/** Link targets of this process's open fds that match `pattern` (e.g. a leaked userfaultfd or memfd by name). */
export function openFdTargets(pattern: RegExp): string[] {
  const targets: string[] = [];
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      if (pattern.test(target)) targets.push(target);
    } catch {
      // Closed while we listed.
    }
  }
  return targets;
}

/**
 * Pids whose parent is `parent` (this process by default). Zombies are included by default: an unreaped
 * child is a leak a test should see; `{ zombies: false }` counts only live ones, for tests that let the
 * runtime reap.
 */
export function childPids(options: { parent?: number; zombies?: boolean } = {}): number[] {
  const parentPid = options.parent ?? process.pid;
  const children: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const [state, parent] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(parent) !== parentPid) continue;
      if (state === "Z" && options.zombies === false) continue;
      children.push(Number(entry));
    } catch {
      // The process exited while we looked.
    }
  }
  return children;
}

/** Why this process cannot use KVM (`/dev/kvm` missing or not read-write), or undefined when it can. */
export function kvmSkipReason(): string | undefined {
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    return undefined;
  } catch (error) {
    return `needs read-write /dev/kvm (${(error as NodeJS.ErrnoException).code ?? "unusable"})`;
  }
}

/** xorshift32: a deterministic, fast stream of unsigned 32-bit numbers for fuzzing and fixture shapes. */
export function xorshift32(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
}

/** What a child process has written to its piped stdout and stderr so far. */
export function collectOutput(child: ChildProcess): { stdout(): string; stderr(): string } {
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (chunk: Buffer) => {
    stdout += chunk.toString();
  });
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  return { stdout: () => stdout, stderr: () => stderr };
}

/** A directory's names, sorted; none when it does not exist. */
export function entries(dir: string): string[] {
  try {
    return readdirSync(dir).sort();
  } catch {
    return [];
  }
}
