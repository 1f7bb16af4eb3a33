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
 * Records wait until `flush()`: at the end of every layer, when a batch grows past `maxBatchBytes`,
 * and before a hard link to a path with pending records; the applier drops a path's records when
 * it removes the path.
 *
 * When the host refuses a record (EPERM or EACCES: a user namespace whose root may not write
 * `trusted.*`, an LSM policy), the batch is replayed record by record so that only the refused ones
 * are lost, each reported through `onRefused`; any other failure (ENOTSUP, ENOSPC, ...) is an error.
 */
export class XattrWriter {
  readonly #pending = new Map<string, Xattr[]>();
  readonly #maxBatchBytes: number;
  #pendingBytes = 0;
  /** Records written so far. */
  written = 0;

  readonly #onRefused: (path: string, name: string, message: string) => void;

  constructor(
    options: {
      maxBatchBytes?: number;
      onRefused?: (path: string, name: string, message: string) => void;
    } = {},
  ) {
    this.#maxBatchBytes = options.maxBatchBytes ?? 1024 * 1024;
    this.#onRefused = options.onRefused ?? (() => {});
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
    const batch = [...this.#pending];
    this.#pending.clear();
    this.#pendingBytes = 0;
    try {
      runSetfattr(["-h", "--restore=-"], `${lines.join("\n")}\n`);
      this.written += count;
    } catch (error) {
      if (!refusedByHost(error)) throw error;
      for (const [path, xattrs] of batch) {
        for (const xattr of xattrs) {
          // base64 keeps a 64 KiB value under the kernel's 128 KiB limit for one argument.
          const value = xattr.value.length === 0 ? [] : ["-v", `0s${xattr.value.toString("base64")}`];
          try {
            runSetfattr(["-h", "-n", xattr.name, ...value, path]);
            this.written++;
          } catch (recordError) {
            if (!refusedByHost(recordError)) throw recordError;
            this.#onRefused(path, xattr.name, String((recordError as RootfsError).details.stderr));
          }
        }
      }
    }
  }

  /** Remove `names` from the file at `hostPath` now (a directory an upper layer declares again). */
  remove(hostPath: string, names: readonly string[]): void {
    for (const name of names) {
      try {
        runSetfattr(["-h", "-x", name, hostPath]);
      } catch (error) {
        // Never written (the host refused it): already in the state asked for.
        if (!(error instanceof RootfsError && /No such attribute/.test(String(error.details.stderr))))
          throw error;
      }
    }
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

function refusedByHost(error: unknown): boolean {
  if (!(error instanceof RootfsError) || error.code !== "LAYER_INVALID") return false;
  return /Operation not permitted|Permission denied/.test(String(error.details.stderr));
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
