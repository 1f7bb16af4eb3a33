// Resource counts for tests that own fds, child processes, network namespaces or temp files.

import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";

export function openFds(): number {
  return readdirSync("/proc/self/fd").length;
}

export function childProcesses(pid = process.pid): number[] {
  const children: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(fields[1]) === pid) children.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return children;
}

export function networkNamespaces(prefix: string): string[] {
  return spawnSync("ip", ["netns", "list"], { encoding: "utf8" })
    .stdout.split("\n")
    .map((line) => line.split(" ")[0] ?? "")
    .filter((name) => name.startsWith(prefix));
}

export function agentFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}
