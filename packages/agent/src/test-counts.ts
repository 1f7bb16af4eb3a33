// Resource counts for tests that own fds, child processes, network namespaces or temp files.

import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { childPids } from "@sbx/arch/testing";

export function openFds(): number {
  return readdirSync("/proc/self/fd").length;
}

/** Pids whose parent is `pid` (zombies included). */
export const childProcesses = (pid = process.pid): number[] => childPids({ parent: pid });

export function networkNamespaces(prefix: string): string[] {
  return spawnSync("ip", ["netns", "list"], { encoding: "utf8" })
    .stdout.split("\n")
    .map((line) => line.split(" ")[0] ?? "")
    .filter((name) => name.startsWith(prefix));
}

export function agentFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** The first process named `comm` below `pid` (breadth first), e.g. the agent under its namespace's init. */
export function descendantNamed(pid: number, comm: string): number {
  let level = [pid];
  while (level.length > 0) {
    level = level.flatMap((parent) => childProcesses(parent));
    for (const child of level) {
      try {
        if (readFileSync(`/proc/${child}/comm`, "utf8").trim() === comm) return child;
      } catch {
        // exited meanwhile
      }
    }
  }
  throw new Error(`no process named ${comm} below ${pid}`);
}
