/**
 * A streaming tar parser (ustar, GNU long names, PAX extended headers) that hands each entry to a
 * synchronous handler. It never buffers entry data: file contents are passed to the handler's sink
 * chunk by chunk as they arrive, so a layer of any size streams through in constant memory.
 */

export type TarEntryType =
  | "file"
  | "hardlink"
  | "symlink"
  | "char-device"
  | "block-device"
  | "directory"
  | "fifo";

/** An extended attribute from the entry's PAX header, not yet validated (see xattr.ts). */
export interface TarXattr {
  /** Decoded as UTF-8; bytes that are not show as U+FFFD, which the validation refuses. */
  name: string;
  value: Buffer;
}

export interface TarEntry {
  /** The path as written in the archive (after PAX/GNU long-name processing), not yet cleaned. */
  path: string;
  type: TarEntryType;
  /** Permission bits including setuid/setgid/sticky (07777). */
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch, possibly fractional (PAX). */
  mtime: number;
  size: number;
  linkPath: string;
  deviceMajor: number;
  deviceMinor: number;
  /**
   * `SCHILY.xattr.<name>` (GNU tar, Go's archive/tar, umoci, buildah) and `LIBARCHIVE.xattr.<name>`
   * (bsdtar) records of the entry's own PAX header, in archive order, one per name. A global PAX
   * header's xattrs are ignored, as Go's archive/tar (and so umoci and containerd) does.
   */
  xattrs: readonly TarXattr[];
}

export interface TarEntrySink {
  write(chunk: Buffer): void;
  end(): void;
}

export interface TarEntryHandler {
  /**
   * Called once per entry; return a sink to receive the data of a regular file, or undefined to discard
   * it. `dataOffset` is where the entry's data starts in the archive.
   */
  onEntry(entry: TarEntry, dataOffset: number): TarEntrySink | undefined;
}

export class TarFormatError extends Error {
  override readonly name = "TarFormatError";
}

const BLOCK = 512;
const MAX_META_SIZE = 1024 * 1024;

interface PaxOverrides {
  path?: string;
  linkpath?: string;
  size?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  xattrs?: Map<string, Buffer>;
}

const NO_XATTRS: readonly TarXattr[] = Object.freeze([]);

type State =
  | { kind: "header" }
  | { kind: "data"; remaining: number; padding: number; sink: TarEntrySink | undefined }
  | { kind: "meta"; remaining: number; padding: number; parts: Buffer[]; metaType: "x" | "g" | "L" | "K" }
  | { kind: "padding"; remaining: number }
  | { kind: "end" };

export class TarParser {
  readonly #handler: TarEntryHandler;
  #state: State = { kind: "header" };
  #headerParts: Buffer[] = [];
  #headerLength = 0;
  #zeroBlocks = 0;
  #pax: PaxOverrides = {};
  #globalPax: PaxOverrides = {};
  #longName: string | undefined;
  #longLink: string | undefined;
  #sawHeader = false;
  #position = 0;

  constructor(handler: TarEntryHandler) {
    this.#handler = handler;
  }

  /** Feed the next chunk of the (decompressed) archive. */
  write(chunk: Buffer): void {
    this.#position += chunk.length;
    const chunkStart = this.#position - chunk.length;
    let offset = 0;
    while (offset < chunk.length) {
      const state = this.#state;
      switch (state.kind) {
        case "end":
          return;
        case "header": {
          const take = Math.min(BLOCK - this.#headerLength, chunk.length - offset);
          this.#headerParts.push(chunk.subarray(offset, offset + take));
          this.#headerLength += take;
          offset += take;
          if (this.#headerLength === BLOCK) {
            const block =
              this.#headerParts.length === 1 && this.#headerParts[0]
                ? this.#headerParts[0]
                : Buffer.concat(this.#headerParts);
            this.#headerParts = [];
            this.#headerLength = 0;
            this.#onHeader(block, chunkStart + offset);
          }
          break;
        }
        case "data": {
          const take = Math.min(state.remaining, chunk.length - offset);
          if (take > 0) {
            state.sink?.write(chunk.subarray(offset, offset + take));
            state.remaining -= take;
            offset += take;
          }
          if (state.remaining === 0) {
            state.sink?.end();
            this.#state =
              state.padding > 0 ? { kind: "padding", remaining: state.padding } : { kind: "header" };
          }
          break;
        }
        case "meta": {
          const take = Math.min(state.remaining, chunk.length - offset);
          state.parts.push(Buffer.from(chunk.subarray(offset, offset + take)));
          state.remaining -= take;
          offset += take;
          if (state.remaining === 0) {
            this.#onMeta(state.metaType, Buffer.concat(state.parts));
            this.#state =
              state.padding > 0 ? { kind: "padding", remaining: state.padding } : { kind: "header" };
          }
          break;
        }
        case "padding": {
          const take = Math.min(state.remaining, chunk.length - offset);
          state.remaining -= take;
          offset += take;
          if (state.remaining === 0) this.#state = { kind: "header" };
          break;
        }
      }
    }
  }

  /** True once the end-of-archive marker (two zero blocks) was read. */
  get ended(): boolean {
    return this.#state.kind === "end";
  }

  /**
   * When the parser is inside data nobody reads (a discarded entry, or padding), skip it without
   * being fed the bytes and return how many bytes the caller must skip in the archive; 0 otherwise.
   * Lets an archive with a seekable source be indexed by reading headers only.
   */
  skipDiscardedData(): number {
    const state = this.#state;
    if (state.kind === "padding") {
      this.#state = { kind: "header" };
      this.#position += state.remaining;
      return state.remaining;
    }
    if (state.kind !== "data" || state.sink !== undefined) return 0;
    const bytes = state.remaining + state.padding;
    this.#state = { kind: "header" };
    this.#position += bytes;
    return bytes;
  }

  /** The archive ended; throws when it ended in the middle of an entry. */
  end(): void {
    const state = this.#state;
    if (state.kind === "end") return;
    if (state.kind === "header" && this.#headerLength === 0) {
      // A missing end-of-archive marker is tolerated (Go's archive/tar and GNU tar do too).
      if (!this.#sawHeader) throw new TarFormatError("the archive is empty (not a tar stream)");
      return;
    }
    throw new TarFormatError("the archive is truncated: it ended inside an entry");
  }

  #onHeader(block: Buffer, dataOffset: number): void {
    if (isZeroBlock(block)) {
      this.#zeroBlocks++;
      if (this.#zeroBlocks >= 2) this.#state = { kind: "end" };
      return;
    }
    this.#zeroBlocks = 0;
    if (!checksumValid(block)) {
      throw new TarFormatError(
        this.#sawHeader
          ? "a tar header has a bad checksum (corrupt or truncated archive)"
          : "the stream is not a tar archive (bad header checksum)",
      );
    }
    this.#sawHeader = true;
    const typeflag = String.fromCharCode(block.readUInt8(156));
    const size = parseNumeric(block, 124, 12, "size");
    const padding = (BLOCK - (size % BLOCK)) % BLOCK;
    if (typeflag === "x" || typeflag === "g" || typeflag === "L" || typeflag === "K") {
      if (size > MAX_META_SIZE)
        throw new TarFormatError(`a '${typeflag}' metadata entry of ${size} bytes is too large`);
      this.#state =
        size === 0
          ? { kind: "header" }
          : { kind: "meta", remaining: size, padding, parts: [], metaType: typeflag };
      if (size === 0) this.#onMeta(typeflag, Buffer.alloc(0));
      return;
    }

    const magic = block.toString("latin1", 257, 263);
    const isPosixUstar = magic === "ustar\0";
    let name = readString(block, 0, 100);
    if (isPosixUstar) {
      const prefix = readString(block, 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    const pax = { ...this.#globalPax, ...this.#pax };
    const entrySize = pax.size ?? size;
    const entry: TarEntry = {
      path: pax.path ?? this.#longName ?? name,
      type: "file",
      mode: parseNumeric(block, 100, 8, "mode") & 0o7777,
      uid: pax.uid ?? parseNumeric(block, 108, 8, "uid"),
      gid: pax.gid ?? parseNumeric(block, 116, 8, "gid"),
      mtime: pax.mtime ?? parseNumeric(block, 136, 12, "mtime"),
      size: 0,
      linkPath: pax.linkpath ?? this.#longLink ?? readString(block, 157, 100),
      deviceMajor: 0,
      deviceMinor: 0,
      xattrs: this.#pax.xattrs ? [...this.#pax.xattrs].map(([name, value]) => ({ name, value })) : NO_XATTRS,
    };
    this.#pax = {};
    this.#longName = undefined;
    this.#longLink = undefined;

    let dataSize = entrySize;
    switch (typeflag) {
      case "0":
      case "\0":
      case "7":
        // Old tars mark directories as regular files with a trailing slash.
        entry.type = name.endsWith("/") && typeflag === "\0" ? "directory" : "file";
        break;
      case "1":
        entry.type = "hardlink";
        dataSize = 0;
        break;
      case "2":
        entry.type = "symlink";
        dataSize = 0;
        break;
      case "3":
      case "4":
        entry.type = typeflag === "3" ? "char-device" : "block-device";
        entry.deviceMajor = parseNumeric(block, 329, 8, "devmajor");
        entry.deviceMinor = parseNumeric(block, 337, 8, "devminor");
        dataSize = 0;
        break;
      case "5":
        entry.type = "directory";
        dataSize = 0;
        break;
      case "6":
        entry.type = "fifo";
        dataSize = 0;
        break;
      default:
        throw new TarFormatError(
          `entry ${JSON.stringify(entry.path)} has tar type '${typeflag}', which is not supported (GNU sparse, multi-volume and vendor types are refused)`,
        );
    }
    entry.size = dataSize;
    const sink = this.#handler.onEntry(entry, dataOffset);
    // Hard links and other non-file entries may still carry a size field; their data (if any) is skipped.
    const skip = entrySize - dataSize;
    const remaining = dataSize + skip;
    const entryPadding = (BLOCK - (remaining % BLOCK)) % BLOCK;
    if (remaining === 0) {
      sink?.end();
      this.#state = { kind: "header" };
    } else {
      this.#state = { kind: "data", remaining, padding: entryPadding, sink: dataSize > 0 ? sink : undefined };
      if (dataSize === 0) sink?.end();
    }
  }

  #onMeta(type: "x" | "g" | "L" | "K", data: Buffer): void {
    if (type === "L") this.#longName = readString(data, 0, data.length);
    else if (type === "K") this.#longLink = readString(data, 0, data.length);
    else if (type === "x") {
      const parsed = parsePax(data);
      const xattrs = mergeXattrs(this.#pax.xattrs, parsed.xattrs);
      this.#pax = { ...this.#pax, ...parsed };
      if (xattrs) this.#pax.xattrs = xattrs;
    } else {
      const { xattrs: _ignored, ...parsed } = parsePax(data);
      this.#globalPax = { ...this.#globalPax, ...parsed };
    }
  }
}

function isZeroBlock(block: Buffer): boolean {
  for (let i = 0; i < BLOCK; i++) if (block[i] !== 0) return false;
  return true;
}

function checksumValid(block: Buffer): boolean {
  const stored = parseOctal(block, 148, 8);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const byte = i >= 148 && i < 156 ? 0x20 : block.readUInt8(i);
    unsigned += byte;
    signed += byte > 127 ? byte - 256 : byte;
  }
  return stored === unsigned || stored === signed;
}

function readString(buffer: Buffer, offset: number, length: number): string {
  const end = buffer.indexOf(0, offset);
  const stop = end === -1 || end > offset + length ? offset + length : end;
  return buffer.toString("utf8", offset, stop);
}

function parseOctal(buffer: Buffer, offset: number, length: number): number {
  const text = buffer
    .toString("latin1", offset, offset + length)
    .replace(/[\0 ]+$/g, "")
    .trim();
  if (text === "") return 0;
  if (!/^[0-7]+$/.test(text)) return Number.NaN;
  return Number.parseInt(text, 8);
}

/** Octal, or GNU base-256 when the high bit of the first byte is set. */
function parseNumeric(buffer: Buffer, offset: number, length: number, field: string): number {
  const first = buffer.readUInt8(offset);
  let value: number;
  if (first & 0x80) {
    if (first === 0xff) throw new TarFormatError(`negative ${field} in a tar header`);
    value = first & 0x7f;
    for (let i = 1; i < length; i++) value = value * 256 + buffer.readUInt8(offset + i);
  } else {
    value = parseOctal(buffer, offset, length);
  }
  if (!Number.isSafeInteger(value) || value < 0)
    throw new TarFormatError(`invalid ${field} field in a tar header`);
  return value;
}

const SCHILY_XATTR = "SCHILY.xattr.";
const LIBARCHIVE_XATTR = "LIBARCHIVE.xattr.";

function mergeXattrs(
  earlier: Map<string, Buffer> | undefined,
  later: Map<string, Buffer> | undefined,
): Map<string, Buffer> | undefined {
  if (!earlier || !later) return later ?? earlier;
  const merged = new Map(earlier);
  for (const [name, value] of later) addXattr(merged, name, value);
  return merged;
}

/**
 * bsdtar writes each xattr twice (LIBARCHIVE. and SCHILY.), so a repeated name is fine when the
 * values agree; when they differ, which one the guest would get depends on the reader: refused.
 */
function addXattr(xattrs: Map<string, Buffer>, name: string, value: Buffer): void {
  const existing = xattrs.get(name);
  if (existing && !existing.equals(value)) {
    throw new TarFormatError(`a PAX header gives the xattr ${JSON.stringify(name)} two different values`);
  }
  xattrs.set(name, value);
}

function parsePax(data: Buffer): PaxOverrides {
  const result: PaxOverrides = {};
  let offset = 0;
  while (offset < data.length) {
    const space = data.indexOf(0x20, offset);
    if (space === -1) break;
    const length = Number.parseInt(data.toString("latin1", offset, space), 10);
    if (!Number.isSafeInteger(length) || length <= 0 || offset + length > data.length) {
      throw new TarFormatError("malformed PAX extended header record");
    }
    const recordStart = space + 1;
    const recordEnd = offset + length - 1;
    offset += length;
    const equalsAt = data.indexOf(0x3d, recordStart);
    if (equalsAt === -1 || equalsAt >= recordEnd) continue;
    const key = data.toString("utf8", recordStart, equalsAt);
    if (key.startsWith(SCHILY_XATTR) || key.startsWith(LIBARCHIVE_XATTR)) {
      // xattr values are bytes, not text: taken from the record as they are.
      if (data[recordEnd] !== 0x0a) throw new TarFormatError(`PAX record ${key} does not end in a newline`);
      const raw = data.subarray(equalsAt + 1, recordEnd);
      result.xattrs ??= new Map();
      if (key.startsWith(SCHILY_XATTR)) {
        addXattr(result.xattrs, key.slice(SCHILY_XATTR.length), Buffer.from(raw));
      } else {
        const encodedName = data.toString("latin1", recordStart + LIBARCHIVE_XATTR.length, equalsAt);
        addXattr(
          result.xattrs,
          decodeLibarchiveName(encodedName, key),
          decodeBase64(raw.toString("latin1"), key),
        );
      }
      continue;
    }
    const value = data.toString("utf8", equalsAt + 1, recordEnd);
    switch (key) {
      case "path":
        result.path = value;
        break;
      case "linkpath":
        result.linkpath = value;
        break;
      case "size":
      case "uid":
      case "gid": {
        const number = Number(value);
        if (!Number.isSafeInteger(number) || number < 0)
          throw new TarFormatError(`invalid PAX ${key}=${value}`);
        result[key] = number;
        break;
      }
      case "mtime": {
        const number = Number(value);
        if (!Number.isFinite(number)) throw new TarFormatError(`invalid PAX mtime=${value}`);
        result.mtime = number;
        break;
      }
      default:
        // atime/ctime, uname/gname, SCHILY.acl.* (star's text ACLs) and vendor keys are not applied.
        break;
    }
  }
  return result;
}

/**
 * libarchive percent-encodes the name's bytes (archive_write_set_format_pax.c url_encode());
 * `encoded` holds one latin1 character per byte, so the decoded bytes are read as UTF-8 once.
 */
function decodeLibarchiveName(encoded: string, key: string): string {
  if (/%(?![0-9A-Fa-f]{2})/.test(encoded)) throw new TarFormatError(`malformed PAX record name ${key}`);
  const bytes = Buffer.from(
    encoded.replace(/%([0-9A-Fa-f]{2})/g, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16))),
    "latin1",
  );
  return bytes.toString("utf8");
}

/** libarchive writes base64 without padding; Buffer's decoder would skip junk silently, so check first. */
function decodeBase64(text: string, key: string): Buffer {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.replace(/=+$/, "").length % 4 === 1) {
    throw new TarFormatError(`PAX record ${key} is not base64`);
  }
  return Buffer.from(text, "base64");
}
