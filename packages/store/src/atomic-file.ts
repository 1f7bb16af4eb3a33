import { randomBytes } from "node:crypto";
import { open, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/** `{dir}/.tmp-{pid}-{random}-{name}`: the pid lets a cleaner tell a dead writer's leftovers from a live one's. */
export function tempPathFor(path: string): string {
  return join(dirname(path), `.tmp-${process.pid}-${randomBytes(6).toString("hex")}-${basename(path)}`);
}

export function isTempName(name: string): boolean {
  return name.startsWith(".tmp-");
}

/** The pid a temp name was written by, or undefined for a name that is not one. */
export function tempNameOwner(name: string): number | undefined {
  const match = /^\.tmp-(\d+)-/.exec(name);
  return match ? Number(match[1]) : undefined;
}

export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Writes `path` whole or not at all: `write` fills a temp file beside it, which is fsynced and renamed
 * over `path`, then the directory is fsynced so the rename survives a crash. On any error the temp file
 * is removed.
 */
export async function writeFileAtomic(
  path: string,
  write: (handle: import("node:fs/promises").FileHandle) => Promise<void>,
): Promise<void> {
  const temp = tempPathFor(path);
  const handle = await open(temp, "wx", 0o600);
  try {
    try {
      await write(handle);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
  await syncDirectory(dirname(path));
}

/** True when a process with this pid exists (signal 0 checks without sending). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}
