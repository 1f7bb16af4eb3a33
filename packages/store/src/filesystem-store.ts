// The filesystem backend: one file per key under a root directory (a local disk, or an NFS mount that
// several hosts share). Writes go through a temp file, fsync and rename, so a reader sees an object
// whole or not at all.
import { mkdir, open, readdir, rm, stat } from "node:fs/promises";
import { dirname, join, relative, sep } from "node:path";
import { isTempName, writeFileAtomic } from "./atomic-file.ts";
import {
  type BuildStore,
  checkKey,
  checkPrefix,
  checkRange,
  DEFAULT_MAX_GET_BYTES,
  type GetOptions,
  type PutBody,
  type RequestOptions,
  type StoredObject,
} from "./build-store.ts";
import { StoreError } from "./errors.ts";

/** The directory a FilesystemStore keeps its objects in. */
export interface FilesystemStoreOptions {
  /** The store's root directory; created on first put. */
  directory: string;
}

function ioError(key: string, action: string, cause: unknown): StoreError {
  const code = (cause as NodeJS.ErrnoException).code;
  return new StoreError("STORE_FAILED", `${action} ${key} failed: ${code ?? String(cause)}`, { key, cause });
}

/** A build store in a local or shared directory (`file:///dir`), each object written atomically. */
export class FilesystemStore implements BuildStore {
  readonly description: string;
  readonly #root: string;

  constructor(options: FilesystemStoreOptions) {
    this.#root = options.directory;
    this.description = `file://${options.directory}`;
  }

  #path(key: string): string {
    return join(this.#root, checkKey(key));
  }

  async put(key: string, body: PutBody, options: RequestOptions = {}): Promise<void> {
    const path = this.#path(key);
    options.signal?.throwIfAborted();
    try {
      await mkdir(dirname(path), { recursive: true, mode: 0o700 });
      await writeFileAtomic(path, async (handle) => {
        if (body instanceof Uint8Array) {
          await handle.writeFile(body);
          return;
        }
        const source = await open(body.path, "r");
        try {
          const start = body.offset ?? 0;
          const length = body.length ?? (await source.stat()).size - start;
          const buffer = Buffer.allocUnsafe(Math.min(length, 1024 * 1024));
          for (let done = 0; done < length; ) {
            options.signal?.throwIfAborted();
            const { bytesRead } = await source.read(
              buffer,
              0,
              Math.min(buffer.length, length - done),
              start + done,
            );
            if (bytesRead === 0)
              throw new StoreError("STORE_FAILED", `${body.path} ends before ${start + length}`, { key });
            await handle.write(buffer, 0, bytesRead);
            done += bytesRead;
          }
        } finally {
          await source.close();
        }
      });
    } catch (cause) {
      if (cause instanceof StoreError) throw cause;
      throw ioError(key, "writing", cause);
    }
  }

  async get(key: string, options: GetOptions = {}): Promise<Buffer> {
    const path = this.#path(key);
    const offset = options.offset ?? 0;
    checkRange(key, offset, options.length);
    options.signal?.throwIfAborted();
    let handle: import("node:fs/promises").FileHandle;
    try {
      handle = await open(path, "r");
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code === "ENOENT")
        throw new StoreError("NOT_FOUND", `${key} is not in ${this.description}`, { key, cause });
      throw ioError(key, "opening", cause);
    }
    try {
      const size = (await handle.stat()).size;
      const length = options.length ?? size - offset;
      const limit = options.length ?? options.maxBytes ?? DEFAULT_MAX_GET_BYTES;
      if (length > limit)
        throw new StoreError("STORE_FAILED", `reading ${key}: ${length} bytes, more than ${limit}`, { key });
      if (offset + length > size)
        throw new StoreError(
          "RANGE_INVALID",
          `${key} has ${size} bytes; ${offset}+${length} runs past its end`,
          {
            key,
          },
        );
      const buffer = Buffer.allocUnsafe(length);
      for (let done = 0; done < length; ) {
        const { bytesRead } = await handle.read(buffer, done, length - done, offset + done);
        if (bytesRead === 0) throw new StoreError("STORE_FAILED", `${key} shrank while being read`, { key });
        done += bytesRead;
      }
      return buffer;
    } finally {
      await handle.close();
    }
  }

  async head(key: string): Promise<StoredObject | undefined> {
    try {
      const info = await stat(this.#path(key));
      return info.isFile() ? { key, sizeBytes: info.size } : undefined;
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw ioError(key, "stat of", cause);
    }
  }

  async list(prefix: string): Promise<StoredObject[]> {
    checkPrefix(prefix);
    // Walk only the directory the prefix is inside, not the whole store.
    const base = prefix.includes("/") ? prefix.slice(0, prefix.lastIndexOf("/")) : "";
    const found: StoredObject[] = [];
    const walk = async (dir: string): Promise<void> => {
      let entries: import("node:fs").Dirent[];
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (cause) {
        if ((cause as NodeJS.ErrnoException).code === "ENOENT") return;
        throw ioError(relative(this.#root, dir), "listing", cause);
      }
      for (const entry of entries) {
        if (isTempName(entry.name)) continue;
        const path = join(dir, entry.name);
        const key = relative(this.#root, path).split(sep).join("/");
        if (entry.isDirectory()) {
          if (key.startsWith(prefix) || prefix.startsWith(`${key}/`)) await walk(path);
        } else if (entry.isFile() && key.startsWith(prefix)) {
          found.push({ key, sizeBytes: (await stat(path)).size });
        }
      }
    };
    await walk(join(this.#root, base));
    return found.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async delete(key: string): Promise<void> {
    try {
      await rm(this.#path(key), { force: true });
    } catch (cause) {
      throw ioError(key, "removing", cause);
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {}
}
