import { lstatSync, mkdirSync, readlinkSync } from "node:fs";
import { join } from "node:path";

/**
 * Path resolution confined to a root directory, with the semantics of filepath-securejoin (used by
 * containerd, runc and umoci): symlinks met along the way are followed, but resolved as if the root
 * were `/`: an absolute target restarts at the root and `..` never climbs above it. A symlink that
 * stays inside (Debian's `bin -> usr/bin`) therefore behaves as it will in the guest, and one that
 * points out (`evil -> /etc`) lands inside the root instead (`<root>/etc`).
 *
 * The resolver assumes nothing else modifies the tree while it works (the unpacker owns a private
 * staging directory), so resolve-then-operate has no race.
 */

/** Split a tar entry name into clean components; `null` when `..` climbs above the root. */
export function cleanEntryPath(name: string): string[] | null {
  const components: string[] = [];
  for (const part of name.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") {
      if (components.length === 0) return null;
      components.pop();
      continue;
    }
    components.push(part);
  }
  return components;
}

const MAX_SYMLINK_HOPS = 255;

export class SymlinkLoopError extends Error {
  override readonly name = "SymlinkLoopError";
}

export class RootPathResolver {
  readonly root: string;
  /** Resolved real paths of directories, keyed by the entry-path they were asked for. */
  readonly #directoryCache = new Map<string, string[]>();

  constructor(root: string) {
    this.root = root;
  }

  /** The host path of root-relative real components. */
  hostPath(components: readonly string[]): string {
    return components.length === 0 ? this.root : join(this.root, ...components);
  }

  /**
   * Resolve `components` inside the root. Every symlink along the path is followed within the root;
   * the final component is followed only when `followFinal` is set. Returns real components.
   */
  resolve(components: readonly string[], followFinal: boolean): string[] {
    let current: string[] = [];
    const remaining = [...components].reverse();
    let hops = 0;
    let missing = false;
    for (let part = remaining.pop(); part !== undefined; part = remaining.pop()) {
      if (part === "" || part === ".") continue;
      if (part === "..") {
        current.pop();
        missing = false;
        continue;
      }
      current.push(part);
      if (missing) continue;
      if (remaining.length === 0 && !followFinal) break;
      const stat = lstatSync(this.hostPath(current), { throwIfNoEntry: false });
      if (!stat) {
        missing = true;
        continue;
      }
      if (!stat.isSymbolicLink()) continue;
      if (++hops > MAX_SYMLINK_HOPS) {
        throw new SymlinkLoopError(
          `more than ${MAX_SYMLINK_HOPS} symlinks while resolving ${components.join("/")}`,
        );
      }
      const target = readlinkSync(this.hostPath(current));
      current.pop();
      if (target.startsWith("/")) current = [];
      const targetParts = target.split("/").filter((p) => p !== "" && p !== ".");
      for (const part of targetParts.reverse()) remaining.push(part);
    }
    return current;
  }

  /**
   * Resolve a directory (following symlinks within the root, the last one too) and create whatever
   * is missing, with `mode`. Cached until `invalidate()`.
   */
  ensureDirectory(components: readonly string[], mode = 0o755): string[] {
    const key = components.join("/");
    const cached = this.#directoryCache.get(key);
    if (cached) return cached;
    const real = this.resolve(components, true);
    if (real.length > 0) {
      const stat = lstatSync(this.hostPath(real), { throwIfNoEntry: false });
      if (!stat) {
        // Every existing component of `real` is a real directory (the resolver followed each
        // symlink), so mkdir -p cannot be redirected.
        mkdirSync(this.hostPath(real), { recursive: true, mode });
      } else if (!stat.isDirectory()) {
        throw new NotADirectoryError(`${real.join("/")} exists and is not a directory`);
      }
    }
    this.#directoryCache.set(key, real);
    return real;
  }

  /** Forget cached resolutions; call after anything that removes or replaces a directory or symlink. */
  invalidate(): void {
    this.#directoryCache.clear();
  }
}

export class NotADirectoryError extends Error {
  override readonly name = "NotADirectoryError";
}
