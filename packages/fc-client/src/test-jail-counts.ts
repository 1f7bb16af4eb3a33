import { readdirSync, readFileSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { entries } from "@sbx/arch/testing";

export { entries };

/** Live (not zombie) processes whose command line carries `--id <id>` with `id` starting with `idPrefix`. */
export function firecrackerPids(idPrefix: string): number[] {
  const out: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const args = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0");
      const at = args.indexOf("--id");
      if (at < 0 || !args[at + 1]?.startsWith(idPrefix)) continue;
      // The jailer's wrappers (unshare, the namespace init) carry the same arguments.
      if (basename(args[0] ?? "") !== "firecracker") continue;
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      if (stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")) continue;
      out.push(Number(entry));
    } catch {
      // gone while we looked
    }
  }
  return out.sort((a, b) => a - b);
}

/** Per-VM cgroup directories under `parent` in every v1 hierarchy and the v2 one. */
export function cgroupChildren(parent: string): string[] {
  const out: string[] = [];
  for (const hierarchy of entries("/sys/fs/cgroup")) {
    const dir = join("/sys/fs/cgroup", hierarchy, parent);
    for (const name of entries(dir)) {
      if (statSync(join(dir, name)).isDirectory()) out.push(join(dir, name));
    }
  }
  return out;
}

export async function until(condition: () => boolean, withinMs: number): Promise<void> {
  const deadline = Date.now() + withinMs;
  while (!condition() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
}
