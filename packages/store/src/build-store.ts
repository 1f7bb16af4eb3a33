// The contract every backend keeps. Keys are slash-separated paths relative to the store's root (a
// bucket prefix or a directory); an object is written whole or not at all, so a reader never sees half
// of one, and writing the same bytes to the same key twice is harmless.
import { StoreError } from "./errors.ts";

/** An object in the store: its key and size. */
export interface StoredObject {
  key: string;
  sizeBytes: number;
}

/** Bytes to put: in memory, or a byte range of a local file (the whole file by default). */
export type PutBody = Uint8Array | { path: string; offset?: number; length?: number };

/** Options every store request takes. */
export interface RequestOptions {
  signal?: AbortSignal | undefined;
}

/** How much of an object `get` reads, and the most it accepts. */
export interface GetOptions extends RequestOptions {
  /** Read `length` bytes from `offset` (a range GET); the whole object by default. */
  offset?: number;
  length?: number;
  /** Refuse an object larger than this (STORE_FAILED) instead of reading it; default 1 GiB. */
  maxBytes?: number;
}

export const DEFAULT_MAX_GET_BYTES = 1024 * 1024 * 1024;

/** Where builds live between hosts: put, get (whole or a range), head, list and delete of keys. */
export interface BuildStore extends AsyncDisposable {
  /** Where it points, for logs and `sbx doctor` (never a credential). */
  readonly description: string;
  put(key: string, body: PutBody, options?: RequestOptions): Promise<void>;
  /** Throws NOT_FOUND when the key is absent. */
  get(key: string, options?: GetOptions): Promise<Buffer>;
  /** undefined when the key is absent. */
  head(key: string, options?: RequestOptions): Promise<StoredObject | undefined>;
  /** Every object whose key starts with `prefix`, sorted by key. */
  list(prefix: string, options?: RequestOptions): Promise<StoredObject[]>;
  /** Removing an absent key is not an error. */
  delete(key: string, options?: RequestOptions): Promise<void>;
}

const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
export const MAX_KEY_LENGTH = 512;

/** Throws KEY_INVALID unless every segment is plain ASCII that cannot climb out of the root. */
export function checkKey(key: string): string {
  if (key.length === 0 || key.length > MAX_KEY_LENGTH || !key.split("/").every((s) => SEGMENT.test(s)))
    throw new StoreError(
      "KEY_INVALID",
      `store key ${JSON.stringify(key)} is not a/b/c of [A-Za-z0-9._-] segments`,
      {
        key,
      },
    );
  return key;
}

/** A list prefix: a key, a key ending in "/", or "" for everything. */
export function checkPrefix(prefix: string): string {
  if (prefix === "") return prefix;
  checkKey(prefix.endsWith("/") ? prefix.slice(0, -1) : prefix);
  return prefix;
}

export function checkRange(key: string, offset: number, length: number | undefined): void {
  if (
    !Number.isSafeInteger(offset) ||
    offset < 0 ||
    (length !== undefined && (!Number.isSafeInteger(length) || length < 0))
  )
    throw new StoreError(
      "RANGE_INVALID",
      `range ${offset}+${length} of ${key} is not a non-negative integer range`,
      {
        key,
      },
    );
}
