import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { readlinkSync } from "node:fs";
import { childPids as allChildPids, collectOutput, entries } from "@sbx/arch/testing";

export { entries, openFdCount } from "@sbx/arch/testing";

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

/** A stand-in for an orchestrator process in a test: a TypeScript script run from source. */
export interface OwnerChild {
  child: ChildProcess;
  /** Resolves when the child has exited (after `SIGKILL`, say). */
  exited: Promise<void>;
  stderr(): string;
  /** The first line the child prints; rejects with its stderr if it exits or `withinMs` passes first. */
  firstLine(withinMs: number): Promise<string>;
}

/** Starts `node --conditions=@sbx/source script ...args` with its output collected. */
export function spawnOwnerChild(script: string, args: readonly string[]): OwnerChild {
  const child = spawn(process.execPath, ["--conditions=@sbx/source", script, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const output = collectOutput(child);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const firstLine = (withinMs: number) =>
    new Promise<string>((resolve, reject) => {
      const fail = (why: string) => {
        clearInterval(poll);
        clearTimeout(timer);
        reject(new Error(`${why}; stderr: ${output.stderr()}`));
      };
      const poll = setInterval(() => {
        const end = output.stdout().indexOf("\n");
        if (end >= 0) {
          clearInterval(poll);
          clearTimeout(timer);
          resolve(output.stdout().slice(0, end));
        } else if (child.exitCode !== null || child.signalCode !== null) {
          fail(`${script} exited (${child.exitCode ?? child.signalCode}) before printing a line`);
        }
      }, 20);
      const timer = setTimeout(() => fail(`${script} printed no line within ${withinMs} ms`), withinMs);
    });
  return { child, exited, stderr: output.stderr, firstLine };
}
