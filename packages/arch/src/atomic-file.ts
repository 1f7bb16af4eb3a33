import { randomBytes } from "node:crypto";
import { type FileHandle, open, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

// `.{name}.tmp-{pid}-{random}`: hidden, never ending in the target's extension (so a `*.json` listing
// skips it), and the pid lets a cleaner tell a dead writer's leftovers from a live one's.
const TEMP_PATTERN = /^\.(?:.+\.)?tmp-(\d+)-/;

/**
 * A temp path for writing `path` atomically: `{dir}/.{name}.tmp-{pid}-{random}`, in `path`'s directory
 * or in `directory` (which must be on the same file system, for the rename).
 */
export function tempPathFor(path: string, directory = dirname(path)): string {
  return join(directory, `.${basename(path)}.tmp-${process.pid}-${randomBytes(6).toString("hex")}`);
}

/** True for a name `tempPathFor` made (and for the store's older `.tmp-{pid}-…` form); always a hidden name. */
export function isTempName(name: string): boolean {
  return TEMP_PATTERN.test(name);
}

/** The pid that wrote a temp name, or undefined for a name that is not one. */
export function tempNameOwner(name: string): number | undefined {
  const match = TEMP_PATTERN.exec(name);
  return match ? Number(match[1]) : undefined;
}

/** fsyncs a directory, which makes a rename or unlink in it durable. */
export async function syncDirectory(path: string): Promise<void> {
  const directory = await open(path, "r");
  try {
    await directory.sync();
  } finally {
    await directory.close();
  }
}

/** What `writeFileAtomic` writes: bytes, text, or a function that fills the open temp file. */
export type AtomicFileContent = string | Uint8Array | ((handle: FileHandle) => Promise<void>);

/** Options of `writeFileAtomic`. */
export interface WriteFileAtomicOptions {
  /** Permission bits of the file, set with fchmod so the umask does not narrow them; default 0o600. */
  mode?: number;
  /**
   * Where the temp file is made, on `path`'s file system; default beside `path`. A directory of its own
   * keeps half-written files out of a directory others list (a cache's entries).
   */
  tempDirectory?: string;
}

/**
 * Writes `path` so a reader sees the old content or the new, never a mix: a temp file beside it is
 * filled, fsynced, renamed over `path`, and the directory is fsynced so the rename survives a crash. On
 * any error the temp file is removed and `path` is untouched; a crash leaves at most a temp file, which
 * `isTempName` recognises.
 */
export async function writeFileAtomic(
  path: string,
  content: AtomicFileContent,
  options: WriteFileAtomicOptions = {},
): Promise<void> {
  const temp = tempPathFor(path, options.tempDirectory);
  const handle = await open(temp, "wx", 0o600);
  try {
    try {
      if (typeof content === "function") await content(handle);
      else await handle.writeFile(content);
      if (options.mode !== undefined) await handle.chmod(options.mode);
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

/** `writeFileAtomic` of `value` as pretty-printed JSON with a final newline. */
export function writeJsonAtomic(
  path: string,
  value: unknown,
  options: WriteFileAtomicOptions = {},
): Promise<void> {
  return writeFileAtomic(path, `${JSON.stringify(value, null, 2)}\n`, options);
}
