import { execFileSync } from "node:child_process";
import {
  chmodSync,
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeSync,
} from "node:fs";
import type { Logger } from "@sbx/arch";
import { RootfsError } from "./errors.ts";
import { cleanEntryPath, NotADirectoryError, RootPathResolver, SymlinkLoopError } from "./safe-path.ts";
import type { TarEntry, TarEntryHandler, TarEntrySink } from "./tar-reader.ts";
import {
  classifyXattr,
  type Xattr,
  type XattrHostPrivileges,
  type XattrPolicy,
  XattrRejectedError,
  xattrBytes,
} from "./xattr.ts";
import { XattrWriter } from "./xattr-writer.ts";

/** What to do with device nodes or fifos found in a layer. */
export type SpecialFilePolicy = "create" | "skip" | "refuse";

export interface LayerApplyOptions {
  /** Character and block devices (default "skip": the guest's init mounts devtmpfs). Creating needs CAP_MKNOD. */
  devices: SpecialFilePolicy;
  /** Named pipes (default "create"). */
  fifos: SpecialFilePolicy;
  /** Apply the uid/gid of each entry (needs root; default: when running as root). */
  preserveOwnership: boolean;
  /** Which xattrs to apply and the bounds on them. */
  xattrs: XattrPolicy;
  /** What the unpacking process may write (CAP_SETFCAP, CAP_SYS_ADMIN). */
  hostPrivileges: XattrHostPrivileges;
  logger: Logger;
  /** Paths with more components fail with UNPACK_LIMIT_EXCEEDED (a path-depth bomb). */
  maxPathDepth?: number;
}

/** xattrs of one name that were not applied for one reason, over all layers. */
export interface IgnoredXattrs {
  name: string;
  reason: string;
  count: number;
  /** The first entry it happened to. */
  layer: string;
  entry: string;
}

/** The extended attributes a layer apply wrote, and those it ignored. */
export interface XattrSummary {
  /** xattr records written. */
  applied: number;
  ignored: IgnoredXattrs[];
}

/** A layer entry that was not applied, and why. */
export interface SkippedEntry {
  layer: string;
  entry: string;
  reason: string;
}

interface DirectoryMetadata {
  mode: number;
  mtime: number;
}

const WHITEOUT_PREFIX = ".wh.";
const OPAQUE_MARKER = ".wh..wh..opq";
const FILE_OPEN_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/**
 * Applies layers, in order, onto one root directory. Every path goes through RootPathResolver, so no
 * entry can create, replace or remove anything outside the root; the refusals are RootfsErrors with
 * code LAYER_UNSAFE_ENTRY naming the layer digest and the entry.
 */
export class LayerApplier {
  readonly #resolver: RootPathResolver;
  readonly #options: LayerApplyOptions;
  readonly #directories = new Map<string, DirectoryMetadata>();
  readonly skipped: SkippedEntry[] = [];
  #layer = "";
  /** Real paths written by the current layer: whiteouts and opaque markers only hide lower layers. */
  #layerPaths = new Set<string>();
  #opaqueDirectories: string[][] = [];
  /** The file being written, closed by `abort()` when the stream fails in the middle of it. */
  #openFd: number | undefined;
  readonly #xattrWriter = new XattrWriter({
    onRefused: (path, name, message) =>
      this.#noteIgnored(
        path.slice(this.#resolver.root.length + 1),
        name,
        `the host refused to write it (${message.replace(/^setfattr: .*: /, "")})`,
      ),
  });
  /** Names applied to each directory (real key), removed again when an upper layer declares it anew. */
  readonly #directoryXattrs = new Map<string, string[]>();
  readonly #ignoredXattrs = new Map<string, IgnoredXattrs>();
  #layerIgnoredXattrs = new Map<string, IgnoredXattrs>();
  #layerXattrCount = 0;
  #layerXattrBytes = 0;
  entries = 0;

  constructor(root: string, options: LayerApplyOptions) {
    this.#resolver = new RootPathResolver(root);
    this.#options = options;
  }

  /** A tar handler for one layer; feed it the layer's decompressed tar stream. */
  beginLayer(layerDigest: string): TarEntryHandler {
    this.#layer = layerDigest;
    this.#layerPaths = new Set();
    this.#opaqueDirectories = [];
    this.#layerIgnoredXattrs = new Map();
    this.#layerXattrCount = 0;
    this.#layerXattrBytes = 0;
    return { onEntry: (entry) => this.#onEntry(entry) };
  }

  /**
   * The layer's tar ended: empty its opaque directories of everything lower layers put there (what
   * this layer wrote, and the directories leading to it, stay).
   */
  endLayer(): void {
    for (const directory of this.#opaqueDirectories) this.#clearOpaque(directory);
    this.#opaqueDirectories = [];
    this.#xattrWriter.flush();
    for (const group of this.#layerIgnoredXattrs.values()) {
      const lsm = group.reason.startsWith("LSM label");
      (lsm ? this.#options.logger.info : this.#options.logger.warn)?.(
        {
          layer: group.layer,
          xattr: group.name,
          count: group.count,
          example: group.entry,
          reason: group.reason,
        },
        lsm ? "LSM labels in the image not applied" : "xattrs in the image not applied",
      );
    }
  }

  /** What happened to the image's xattrs so far. */
  xattrSummary(): XattrSummary {
    return {
      applied: this.#xattrWriter.written,
      ignored: [...this.#ignoredXattrs.values()].map((group) => ({ ...group })),
    };
  }

  #clearOpaque(directory: string[]): void {
    const host = this.#resolver.hostPath(directory);
    const stat = lstatSync(host, { throwIfNoEntry: false });
    if (!stat?.isDirectory()) return;
    const prefix = directory.length === 0 ? "" : `${directory.join("/")}/`;
    for (const child of readdirSync(host)) {
      const childKey = `${prefix}${child}`;
      if (!this.#layerPaths.has(childKey)) {
        this.#remove(this.#resolver.hostPath([...directory, child]), true);
      } else if (lstatSync(this.#resolver.hostPath([...directory, child])).isDirectory()) {
        this.#clearOpaque([...directory, child]);
      }
    }
  }

  /** Release what an interrupted layer left open (the file being written). */
  abort(): void {
    if (this.#openFd === undefined) return;
    closeSync(this.#openFd);
    this.#openFd = undefined;
  }

  /** Apply directory modes and mtimes, deepest first, once every layer is in. */
  finish(): void {
    const paths = [...this.#directories.keys()].sort((a, b) => depth(b) - depth(a));
    for (const path of paths) {
      const metadata = this.#directories.get(path);
      if (!metadata) continue;
      const host = this.#resolver.hostPath(path === "" ? [] : path.split("/"));
      const stat = lstatSync(host, { throwIfNoEntry: false });
      if (!stat?.isDirectory()) continue;
      chmodSync(host, metadata.mode);
      utimesSync(host, metadata.mtime, metadata.mtime);
    }
    if (!this.#directories.has("")) chmodSync(this.#resolver.root, 0o755);
  }

  #refuse(entry: string, reason: string): never {
    throw new RootfsError(
      "LAYER_UNSAFE_ENTRY",
      `layer ${this.#layer} entry ${JSON.stringify(entry)} was refused: ${reason}. The image is malformed or hostile; rebuild it with a standard tool (docker, buildah, umoci) or do not use it`,
      { details: { layer: this.#layer, entry, reason } },
    );
  }

  #invalid(entry: string, reason: string, cause?: unknown): never {
    throw new RootfsError(
      "LAYER_INVALID",
      `layer ${this.#layer} entry ${JSON.stringify(entry)} could not be applied: ${reason}`,
      { cause, details: { layer: this.#layer, entry, reason } },
    );
  }

  #onEntry(entry: TarEntry): TarEntrySink | undefined {
    this.entries++;
    const components = cleanEntryPath(entry.path);
    if (components === null) this.#refuse(entry.path, "its path climbs above the image root with '..'");
    const maxDepth = this.#options.maxPathDepth;
    if (maxDepth !== undefined && components.length > maxDepth)
      throw new RootfsError(
        "UNPACK_LIMIT_EXCEEDED",
        `the image exceeds the unpack limit at layer ${this.#layer}: a path of ${components.length} components (at most ${maxDepth}). Raise limits if the image is trusted`,
        { details: { layer: this.#layer, entry: entry.path, limit: `maxPathDepth ${maxDepth}` } },
      );
    // The previous entry is complete (its data ended before this header), so its records can go.
    if (this.#xattrWriter.full) this.#xattrWriter.flush();
    const xattrs = this.#xattrsToApply(entry);
    try {
      return this.#apply(entry, components, xattrs);
    } catch (error) {
      if (error instanceof RootfsError) throw error;
      if (error instanceof SymlinkLoopError) this.#refuse(entry.path, error.message);
      if (error instanceof NotADirectoryError) this.#invalid(entry.path, error.message, error);
      this.#invalid(entry.path, (error as Error).message, error);
    }
  }

  #apply(entry: TarEntry, components: string[], xattrs: Xattr[]): TarEntrySink | undefined {
    const base = components.at(-1);
    if (base === undefined) {
      if (entry.type !== "directory")
        this.#refuse(entry.path, "it would replace the image root with a non-directory");
      this.#directories.set("", { mode: entry.mode, mtime: entry.mtime });
      this.#chown(this.#resolver.root, entry);
      this.#setDirectoryXattrs("", this.#resolver.root, xattrs);
      return undefined;
    }
    const parentComponents = components.slice(0, -1);

    if (base.startsWith(WHITEOUT_PREFIX)) {
      this.#whiteout(entry, parentComponents, base);
      return undefined;
    }

    const parent = this.#resolver.ensureDirectory(parentComponents);
    const real = [...parent, base];
    const realKey = real.join("/");
    const host = this.#resolver.hostPath(real);
    const existing = lstatSync(host, { throwIfNoEntry: false });

    if (entry.type === "directory") {
      if (existing && !existing.isDirectory()) this.#remove(host, existing.isSymbolicLink());
      if (!existing?.isDirectory()) mkdirSync(host, { mode: 0o700 });
      this.#chown(host, entry);
      this.#setDirectoryXattrs(realKey, host, xattrs);
      this.#directories.set(realKey, { mode: entry.mode, mtime: entry.mtime });
      this.#markWritten(realKey);
      return undefined;
    }

    if (entry.type === "hardlink") {
      // The link shares its target's inode and so its xattrs; the entry's own records are not
      // applied (umoci and containerd do the same).
      const target = this.#hardlinkTarget(entry);
      if (target.join("/") === realKey) return undefined;
      const targetHost = this.#resolver.hostPath(target);
      // Written now: the target's path may be replaced later in this layer, the link's inode stays.
      if (this.#xattrWriter.has(targetHost)) this.#xattrWriter.flush();
      if (existing) this.#remove(host, existing.isDirectory() || existing.isSymbolicLink());
      linkSync(targetHost, host);
      this.#markWritten(realKey);
      return undefined;
    }

    if (entry.type === "char-device" || entry.type === "block-device" || entry.type === "fifo") {
      const policy = entry.type === "fifo" ? this.#options.fifos : this.#options.devices;
      const kind = entry.type === "fifo" ? "fifo" : "device node";
      if (policy === "refuse") this.#refuse(entry.path, `it is a ${kind} and the ${kind} policy is "refuse"`);
      if (policy === "skip") {
        this.skipped.push({ layer: this.#layer, entry: entry.path, reason: `${kind} (policy "skip")` });
        return undefined;
      }
    }

    if (existing) this.#remove(host, existing.isDirectory() || existing.isSymbolicLink());
    this.#markWritten(realKey);

    switch (entry.type) {
      case "symlink":
        // The target is stored as written: it is content for the guest, never followed here.
        symlinkSync(entry.linkPath, host);
        this.#chown(host, entry);
        lutimesSync(host, entry.mtime, entry.mtime);
        this.#xattrWriter.add(host, xattrs);
        return undefined;
      case "char-device":
      case "block-device":
        execFileSync("mknod", [
          "-m",
          (entry.mode & 0o7777).toString(8),
          host,
          entry.type === "char-device" ? "c" : "b",
          String(entry.deviceMajor),
          String(entry.deviceMinor),
        ]);
        this.#chown(host, entry);
        utimesSync(host, entry.mtime, entry.mtime);
        this.#xattrWriter.add(host, xattrs);
        return undefined;
      case "fifo":
        execFileSync("mkfifo", ["-m", (entry.mode & 0o7777).toString(8), host]);
        this.#chown(host, entry);
        utimesSync(host, entry.mtime, entry.mtime);
        this.#xattrWriter.add(host, xattrs);
        return undefined;
      case "file":
        return this.#openFile(host, entry, xattrs);
    }
  }

  #openFile(host: string, entry: TarEntry, xattrs: Xattr[]): TarEntrySink {
    // O_EXCL|O_NOFOLLOW: the path was just cleared, and nothing may be written through a link.
    const fd = openSync(host, FILE_OPEN_FLAGS, 0o600);
    this.#openFd = fd;
    const applier = this;
    return {
      write(chunk: Buffer) {
        let written = 0;
        while (written < chunk.length) written += writeSync(fd, chunk, written, chunk.length - written);
      },
      end() {
        try {
          if (applier.#options.preserveOwnership) fchownSync(fd, entry.uid, entry.gid);
          // chown clears setuid/setgid, so the mode comes after it.
          fchmodSync(fd, entry.mode);
          futimesSync(fd, entry.mtime, entry.mtime);
        } finally {
          applier.#openFd = undefined;
          closeSync(fd);
        }
        // After chown and the last write, which both clear security.capability (commoncap.c killpriv).
        applier.#xattrWriter.add(host, xattrs);
      },
    };
  }

  #hardlinkTarget(entry: TarEntry): string[] {
    const target = cleanEntryPath(entry.linkPath);
    if (target === null)
      this.#refuse(
        entry.path,
        `its hard-link target ${JSON.stringify(entry.linkPath)} climbs above the image root`,
      );
    const name = target.at(-1);
    if (name === undefined) this.#refuse(entry.path, "it is a hard link to the image root");
    // The target's parent resolves inside the root; the link itself is not followed, like link(2).
    const parent = this.#resolver.resolve(target.slice(0, -1), true);
    const real = [...parent, name];
    const stat = lstatSync(this.#resolver.hostPath(real), { throwIfNoEntry: false });
    if (!stat)
      this.#refuse(
        entry.path,
        `its hard-link target ${JSON.stringify(entry.linkPath)} does not exist inside the image`,
      );
    if (stat.isDirectory())
      this.#refuse(entry.path, `its hard-link target ${JSON.stringify(entry.linkPath)} is a directory`);
    return real;
  }

  #whiteout(entry: TarEntry, parentComponents: string[], base: string): void {
    if (base === OPAQUE_MARKER) {
      // Applied when the layer ends, so that the marker's position among the layer's entries does not matter.
      this.#opaqueDirectories.push(this.#resolver.resolve(parentComponents, true));
      return;
    }
    const name = base.slice(WHITEOUT_PREFIX.length);
    if (name.startsWith(WHITEOUT_PREFIX)) return; // other AUFS metadata (.wh..wh.plnk, ...): not content
    if (name === "" || name === "." || name === "..") {
      this.#refuse(
        entry.path,
        `it is a whiteout naming ${JSON.stringify(name || "(empty)")}, which would delete a parent directory`,
      );
    }
    const parent = this.#resolver.resolve(parentComponents, true);
    const real = [...parent, name];
    if (this.#layerPaths.has(real.join("/"))) return;
    const host = this.#resolver.hostPath(real);
    const stat = lstatSync(host, { throwIfNoEntry: false });
    if (stat) this.#remove(host, stat.isDirectory() || stat.isSymbolicLink());
  }

  #remove(host: string, affectsResolution: boolean): void {
    rmSync(host, { recursive: true, force: true });
    this.#xattrWriter.drop(host, affectsResolution);
    if (affectsResolution) {
      this.#resolver.invalidate();
      const relative = host.slice(this.#resolver.root.length + 1);
      for (const key of this.#directories.keys()) {
        if (key === relative || key.startsWith(`${relative}/`)) this.#directories.delete(key);
      }
      for (const key of this.#directoryXattrs.keys()) {
        if (key === relative || key.startsWith(`${relative}/`)) this.#directoryXattrs.delete(key);
      }
    }
  }

  /**
   * Validate the entry's xattrs against the bounds and the policy; returns the ones to write.
   * Every entry is checked, hard links and whiteouts too: a malformed record is refused wherever it is.
   */
  #xattrsToApply(entry: TarEntry): Xattr[] {
    if (entry.xattrs.length === 0) return [];
    const policy = this.#options.xattrs;
    const bytes = entry.xattrs.reduce((sum, xattr) => sum + xattrBytes(xattr), 0);
    if (entry.xattrs.length > policy.maxPerEntry)
      this.#xattrLimit(
        entry.path,
        `${entry.xattrs.length} xattrs on one entry, more than maxPerEntry ${policy.maxPerEntry}`,
      );
    if (bytes > policy.maxEntryBytes)
      this.#xattrLimit(
        entry.path,
        `${bytes} bytes of xattrs on one entry, more than maxEntryBytes ${policy.maxEntryBytes}`,
      );
    this.#layerXattrCount += entry.xattrs.length;
    this.#layerXattrBytes += bytes;
    if (this.#layerXattrCount > policy.maxLayerCount)
      this.#xattrLimit(entry.path, `more than maxLayerCount ${policy.maxLayerCount} xattrs in one layer`);
    if (this.#layerXattrBytes > policy.maxLayerBytes)
      this.#xattrLimit(
        entry.path,
        `more than maxLayerBytes ${policy.maxLayerBytes} bytes of xattrs in one layer`,
      );
    const apply: Xattr[] = [];
    for (const xattr of entry.xattrs) {
      let verdict: ReturnType<typeof classifyXattr>;
      try {
        verdict = classifyXattr(xattr, entry.type, policy, this.#options.hostPrivileges);
      } catch (error) {
        if (!(error instanceof XattrRejectedError)) throw error;
        this.#refuse(entry.path, `its xattr ${JSON.stringify(error.xattr)} is invalid: ${error.message}`);
      }
      if (verdict.action === "apply") apply.push(xattr);
      else this.#noteIgnored(entry.path, xattr.name, verdict.reason);
    }
    return apply;
  }

  #noteIgnored(entry: string, name: string, reason: string): void {
    const key = `${name}\0${reason}`;
    for (const groups of [this.#ignoredXattrs, this.#layerIgnoredXattrs]) {
      const group = groups.get(key);
      if (group) group.count++;
      else groups.set(key, { name, reason, count: 1, layer: this.#layer, entry });
    }
  }

  #xattrLimit(entry: string, what: string): never {
    throw new RootfsError(
      "UNPACK_LIMIT_EXCEEDED",
      `layer ${this.#layer} entry ${JSON.stringify(entry)} exceeds the xattr limits: ${what}. Raise xattrs limits if the image is trusted`,
      { details: { layer: this.#layer, entry, limit: what } },
    );
  }

  /**
   * A directory entry sets the directory's whole xattr set: what a lower layer applied and this
   * entry does not carry is removed, like the rest of its metadata is replaced.
   */
  #setDirectoryXattrs(realKey: string, host: string, xattrs: Xattr[]): void {
    const names = xattrs.map((xattr) => xattr.name);
    const stale = (this.#directoryXattrs.get(realKey) ?? []).filter((name) => !names.includes(name));
    if (stale.length > 0) {
      this.#xattrWriter.flush();
      this.#xattrWriter.remove(host, stale);
    }
    if (names.length > 0) this.#directoryXattrs.set(realKey, names);
    else this.#directoryXattrs.delete(realKey);
    this.#xattrWriter.add(host, xattrs);
  }

  /** Record a path (and its parents, which it needs) as written by the current layer. */
  #markWritten(realKey: string): void {
    let key = realKey;
    while (key !== "" && !this.#layerPaths.has(key)) {
      this.#layerPaths.add(key);
      const slash = key.lastIndexOf("/");
      key = slash === -1 ? "" : key.slice(0, slash);
    }
  }

  #chown(host: string, entry: TarEntry): void {
    if (this.#options.preserveOwnership) lchownSync(host, entry.uid, entry.gid);
  }
}

function depth(path: string): number {
  if (path === "") return 0;
  let count = 1;
  for (let i = 0; i < path.length; i++) if (path.charCodeAt(i) === 47) count++;
  return count;
}
