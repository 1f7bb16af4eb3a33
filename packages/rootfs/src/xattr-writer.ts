import { execFileSync } from "node:child_process";
import { RootfsError } from "./errors.ts";
import type { Xattr } from "./xattr.ts";

/**
 * Writes xattrs with `setfattr` (Debian `attr`): Node has no xattr API, and this package already
 * calls mknod/mkfifo for what Node's fs cannot do. Records are batched into one `setfattr -h
 * --restore=-` per flush, so an image with an xattr on every file costs a few processes, not one per
 * file. `-h` makes it lsetxattr(2): a symlink's own xattrs are written and no link is followed. The
 * paths are resolved real paths inside the unpacker's private staging directory.
 *
 * Records wait until `flush()`: the applier flushes before it removes or links to a path that has
 * pending records, at the end of every layer, and when a batch grows past `maxBatchBytes`.
 */
export class XattrWriter {
  readonly #pending = new Map<string, Xattr[]>();
  readonly #maxBatchBytes: number;
  #pendingBytes = 0;
  /** Records written so far. */
  written = 0;

  constructor(options: { maxBatchBytes?: number } = {}) {
    this.#maxBatchBytes = options.maxBatchBytes ?? 1024 * 1024;
  }

  /** Queue `xattrs` for the file at `hostPath` (replacing what was queued for it). */
  add(hostPath: string, xattrs: readonly Xattr[]): void {
    if (xattrs.length === 0) return;
    this.drop(hostPath);
    this.#pending.set(hostPath, [...xattrs]);
    for (const xattr of xattrs) this.#pendingBytes += xattr.name.length + xattr.value.length * 2 + 4;
  }

  get full(): boolean {
    return this.#pendingBytes >= this.#maxBatchBytes;
  }

  has(hostPath: string): boolean {
    return this.#pending.has(hostPath);
  }

  /** Forget what was queued for `hostPath` (and, for a directory, everything under it). */
  drop(hostPath: string, directory = false): void {
    this.#forget(hostPath);
    if (!directory) return;
    const prefix = `${hostPath}/`;
    for (const key of this.#pending.keys()) if (key.startsWith(prefix)) this.#forget(key);
  }

  #forget(key: string): void {
    const xattrs = this.#pending.get(key);
    if (!xattrs) return;
    this.#pending.delete(key);
    for (const xattr of xattrs) this.#pendingBytes -= xattr.name.length + xattr.value.length * 2 + 4;
  }

  /** Write every queued record. */
  flush(): void {
    if (this.#pending.size === 0) return;
    const lines: string[] = [];
    let count = 0;
    for (const [path, xattrs] of this.#pending) {
      lines.push(`# file: ${escapeDumpText(path)}`);
      for (const xattr of xattrs) {
        lines.push(
          `${escapeDumpText(xattr.name)}=${xattr.value.length === 0 ? '""' : `0x${xattr.value.toString("hex")}`}`,
        );
        count++;
      }
      lines.push("");
    }
    this.#pending.clear();
    this.#pendingBytes = 0;
    runSetfattr(["-h", "--restore=-"], `${lines.join("\n")}\n`);
    this.written += count;
  }

  /** Remove `names` from the file at `hostPath` now (a directory an upper layer declares again). */
  remove(hostPath: string, names: readonly string[]): void {
    for (const name of names) runSetfattr(["-h", "-x", name, hostPath]);
  }
}

/**
 * setfattr's dump format (attr's quote()/unquote()): a path or name is one line, `=` separates name
 * and value, and `\ooo` is an octal byte. Everything but a conservative set is escaped, so a name or
 * path with newlines, `=`, `#` or non-ASCII bytes round-trips exactly.
 */
export function escapeDumpText(text: string): string {
  let out = "";
  for (const byte of Buffer.from(text, "utf8")) {
    const safe =
      (byte >= 0x30 && byte <= 0x39) ||
      (byte >= 0x41 && byte <= 0x5a) ||
      (byte >= 0x61 && byte <= 0x7a) ||
      byte === 0x2e ||
      byte === 0x2f ||
      byte === 0x5f ||
      byte === 0x2d ||
      byte === 0x2b;
    out += safe ? String.fromCharCode(byte) : `\\${byte.toString(8).padStart(3, "0")}`;
  }
  return out;
}

function runSetfattr(args: string[], input?: string): void {
  try {
    execFileSync("setfattr", args, {
      stdio: ["pipe", "ignore", "pipe"],
      maxBuffer: 1024 * 1024,
      ...(input === undefined ? {} : { input }),
    });
  } catch (error) {
    const failure = error as NodeJS.ErrnoException & { stderr?: Buffer };
    if (failure.code === "ENOENT") {
      throw new RootfsError(
        "TOOL_MISSING",
        "the image has extended attributes (file capabilities, ACLs) and setfattr is not installed to write them; install it (apt install attr)",
        { cause: error, details: { tool: "setfattr", package: "attr" } },
      );
    }
    const stderr = failure.stderr?.toString("utf8").trim().slice(0, 4000) ?? "";
    throw new RootfsError(
      "LAYER_INVALID",
      `setfattr could not write the image's extended attributes: ${stderr || failure.message}. Is the unpack destination on a file system with xattr support (ext4, xfs, btrfs, tmpfs)?`,
      { cause: error, details: { args, stderr } },
    );
  }
}
