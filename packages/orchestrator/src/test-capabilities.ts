import { execFileSync } from "node:child_process";
import { readdirSync, readlinkSync } from "node:fs";
import { childPids as allChildPids } from "@sbx/arch/testing";

export { openFdCount } from "@sbx/arch/testing";

/** Whether `command args` runs and exits 0 here. */
export function hasCommand(command: string, args: string[]): boolean {
  try {
    execFileSync(command, args, { stdio: "ignore", timeout: 5_000 });
    return true;
  } catch {
    return false;
  }
}

/** Why tests that create network namespaces cannot run here, or undefined when they can. */
export function networkSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root for ip netns";
  if (!hasCommand("ip", ["-V"])) return "needs iproute2 (ip)";
  if (!hasCommand("busybox", ["true"])) return "needs busybox for ping";
  return undefined;
}

/** A pool index unlikely to collide with another concurrent test process. */
export function testAddressIndex(slot: number): number {
  return 8192 + (((process.pid % 2000) * 4 + slot) % 8192);
}

/** Live (non-zombie) child processes of this process. */
export const childPids = (): number[] => allChildPids({ zombies: false });

/** A directory's names, sorted; none when it does not exist. */
export function entries(dir: string): string[] {
  try {
    return readdirSync(dir).sort();
  } catch {
    return [];
  }
}

/** Processes whose pid namespace is `ns` (`pid:[…]`). */
export function processesInNamespace(ns: string): number[] {
  return entries("/proc")
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        return readlinkSync(`/proc/${pid}/ns/pid`) === ns;
      } catch {
        return false;
      }
    })
    .map(Number);
}
