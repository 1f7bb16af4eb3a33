import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RootfsError } from "../errors.ts";
import { runCommand } from "../exec.ts";

/** The file type of an ext4 entry, as debugfs names it. */
export type Ext4EntryType =
  | "regular"
  | "directory"
  | "symlink"
  | "character special"
  | "block special"
  | "FIFO"
  | "socket";

/** What debugfs says about an entry of an ext4 image: inode, type, mode, owner, size, links, link target. */
export interface Ext4Stat {
  inode: number;
  type: Ext4EntryType;
  /** Permission bits including setuid/setgid/sticky, e.g. 0o4755. */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  links: number;
  /** For symlinks. */
  linkTarget?: string;
}

async function debugfs(image: string, request: string): Promise<string> {
  const result = await runCommand(["debugfs", "-R", request, image], { check: false, timeoutMs: 60_000 });
  if (result.code !== 0) {
    throw new RootfsError("COMMAND_FAILED", `debugfs -R '${request}' ${image} failed: ${result.stderr}`, {
      details: { image, request },
    });
  }
  // debugfs prints its banner and per-request errors on stderr and still exits 0.
  const error = result.stderr.split("\n").find((line) => line.trim() !== "" && !line.startsWith("debugfs "));
  if (error) {
    throw new RootfsError("COMMAND_FAILED", `debugfs -R '${request}' ${image}: ${error.trim()}`, {
      details: { image, request, stderr: result.stderr },
    });
  }
  return result.stdout;
}

/** `stat` of one path inside an unmounted ext4 image, read with debugfs (no mount, no root needed). */
export async function ext4Stat(image: string, path: string): Promise<Ext4Stat> {
  const out = await debugfs(image, `stat "${path}"`);
  const header = /Inode:\s+(\d+)\s+Type:\s+(.+?)\s+Mode:\s+(\d+)/.exec(out);
  const owner = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(out);
  const size = /Size:\s+(\d+)/.exec(out);
  const links = /Links:\s+(\d+)/.exec(out);
  if (!header || !owner || !size || !links) {
    throw new RootfsError("COMMAND_FAILED", `cannot parse debugfs stat of ${path} in ${image}:\n${out}`, {
      details: { image, path },
    });
  }
  const stat: Ext4Stat = {
    inode: Number(header[1]),
    type: header[2] as Ext4EntryType,
    mode: Number.parseInt(header[3] as string, 8),
    uid: Number(owner[1]),
    gid: Number(owner[2]),
    size: Number(size[1]),
    links: Number(links[1]),
  };
  if (stat.type === "symlink") {
    const fast = /Fast link dest:\s+"(.*)"/.exec(out);
    stat.linkTarget = fast ? (fast[1] as string) : (await ext4ReadFile(image, path)).toString("utf8");
  }
  return stat;
}

/** The names in a directory of an ext4 image (without . and ..). */
export async function ext4List(image: string, dir: string): Promise<string[]> {
  const out = await debugfs(image, `ls -p "${dir}"`);
  const names: string[] = [];
  for (const line of out.split("\n")) {
    // /inode/mode/uid/gid/name/size/
    const fields = line.split("/");
    const name = fields[5];
    if (fields.length >= 7 && name !== undefined && name !== "." && name !== ".." && name !== "")
      names.push(name);
  }
  return names.sort();
}

/** A file's content read out of an ext4 image with debugfs `dump`. */
export async function ext4ReadFile(image: string, path: string): Promise<Buffer> {
  const dir = await mkdtemp(join(tmpdir(), "sbx-ext4-read-"));
  try {
    const out = join(dir, "file");
    await debugfs(image, `dump "${path}" ${out}`);
    return await readFile(out);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
