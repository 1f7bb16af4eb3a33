import { createHash } from "node:crypto";
import { lstatSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A fresh temp dir for one test, removed by the returned dispose. */
export async function tempDir(
  prefix = "sbx-rootfs-oci-",
): Promise<{ path: string; [Symbol.asyncDispose](): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, [Symbol.asyncDispose]: () => rm(path, { recursive: true, force: true }) };
}

/**
 * A fingerprint of everything under `dir` (names, types, modes, sizes, link counts, mtimes, contents,
 * link targets), skipping the names in `exclude` at the top level, so tests can assert nothing changed.
 */
export function snapshotTree(dir: string, exclude: readonly string[] = []): string {
  const lines: string[] = [];
  const walk = (relative: string) => {
    const host = relative ? join(dir, relative) : dir;
    const stat = lstatSync(host);
    let detail = "";
    if (stat.isFile()) detail = createHash("sha256").update(readFileSync(host)).digest("hex");
    else if (stat.isSymbolicLink()) detail = `-> ${readlinkSync(host)}`;
    lines.push(
      `${relative || "."} mode=${stat.mode.toString(8)} nlink=${stat.nlink} size=${stat.size} mtime=${stat.mtimeMs} ${detail}`,
    );
    if (stat.isDirectory()) {
      for (const name of readdirSync(host).sort()) {
        if (!relative && exclude.includes(name)) continue;
        walk(relative ? `${relative}/${name}` : name);
      }
    }
  };
  walk("");
  return lines.join("\n");
}

/**
 * Open fds of this process that are not sockets (files, pipes, dirs): what an unpack or pull must
 * not leak. Sockets are left out because fetch keeps idle keep-alive connections for a few seconds.
 */
export function openFdCount(): number {
  let count = 0;
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      if (!readlinkSync(`/proc/self/fd/${fd}`).startsWith("socket:")) count++;
    } catch {
      // the fd of the readdir itself is gone by now
    }
  }
  return count;
}
