/**
 * A minimal tar writer for building test layers. It writes exactly the names it is given (absolute,
 * `..`, anything), because tests use it to build hostile archives; names or link targets longer than
 * the ustar fields get a PAX extended header.
 */

import type { TarEntryType } from "./tar-reader.ts";

/** One entry of a tar archive to write: path, type, mode, owner, content or link target. */
export interface TarWriterEntry {
  path: string;
  type?: TarEntryType;
  mode?: number;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch. */
  mtime?: number;
  linkPath?: string;
  deviceMajor?: number;
  deviceMinor?: number;
  /** File contents (regular files only). */
  content?: Buffer | string;
}

const TYPEFLAGS: Record<TarEntryType, string> = {
  file: "0",
  hardlink: "1",
  symlink: "2",
  "char-device": "3",
  "block-device": "4",
  directory: "5",
  fifo: "6",
};

const BLOCK = 512;

/** The tar bytes of one entry: optional PAX header, ustar header, data and padding. */
export function tarEntryBytes(entry: TarWriterEntry): Buffer[] {
  const type = entry.type ?? "file";
  const content =
    type === "file"
      ? typeof entry.content === "string"
        ? Buffer.from(entry.content)
        : (entry.content ?? Buffer.alloc(0))
      : undefined;
  const size = content?.length ?? 0;
  const linkPath = entry.linkPath ?? "";
  const parts: Buffer[] = [];
  const pax: string[] = [];
  if (Buffer.byteLength(entry.path) > 100) pax.push(paxRecord("path", entry.path));
  if (Buffer.byteLength(linkPath) > 100) pax.push(paxRecord("linkpath", linkPath));
  if (pax.length > 0) {
    const body = Buffer.from(pax.join(""));
    parts.push(
      header({ path: "PaxHeaders/entry", typeflag: "x", size: body.length, mode: 0o644 }),
      ...pad(body),
    );
  }
  parts.push(
    header({
      path: entry.path,
      typeflag: TYPEFLAGS[type],
      size,
      mode: entry.mode ?? (type === "directory" ? 0o755 : 0o644),
      uid: entry.uid,
      gid: entry.gid,
      mtime: entry.mtime,
      linkPath,
      deviceMajor: entry.deviceMajor,
      deviceMinor: entry.deviceMinor,
    }),
  );
  if (content && content.length > 0) parts.push(...pad(content));
  return parts;
}

/** A complete archive: the entries followed by the two zero blocks that end a tar. */
export function tarArchive(entries: readonly TarWriterEntry[]): Buffer {
  return Buffer.concat([...entries.flatMap(tarEntryBytes), tarEnd()]);
}

export function tarEnd(): Buffer {
  return Buffer.alloc(BLOCK * 2);
}

function pad(data: Buffer): Buffer[] {
  const padding = (BLOCK - (data.length % BLOCK)) % BLOCK;
  return padding === 0 ? [data] : [data, Buffer.alloc(padding)];
}

function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  const base = Buffer.byteLength(body);
  let total = base + 1;
  while (String(total).length + base !== total) total = String(total).length + base;
  return `${total}${body}`;
}

function header(fields: {
  path: string;
  typeflag: string;
  size: number;
  mode: number;
  uid?: number | undefined;
  gid?: number | undefined;
  mtime?: number | undefined;
  linkPath?: string;
  deviceMajor?: number | undefined;
  deviceMinor?: number | undefined;
}): Buffer {
  const block = Buffer.alloc(BLOCK);
  block.write(truncate(fields.path, 100), 0, "utf8");
  writeOctal(block, 100, 8, fields.mode);
  writeOctal(block, 108, 8, fields.uid ?? 0);
  writeOctal(block, 116, 8, fields.gid ?? 0);
  writeOctal(block, 124, 12, fields.size);
  writeOctal(block, 136, 12, Math.floor(fields.mtime ?? 0));
  block.write("        ", 148, "latin1");
  block.write(fields.typeflag, 156, "latin1");
  block.write(truncate(fields.linkPath ?? "", 100), 157, "utf8");
  block.write("ustar\0", 257, "latin1");
  block.write("00", 263, "latin1");
  block.write("root", 265, "latin1");
  block.write("root", 297, "latin1");
  writeOctal(block, 329, 8, fields.deviceMajor ?? 0);
  writeOctal(block, 337, 8, fields.deviceMinor ?? 0);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += block.readUInt8(i);
  block.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  return block;
}

function truncate(value: string, bytes: number): string {
  const buffer = Buffer.from(value);
  return buffer.length <= bytes ? value : buffer.subarray(0, bytes).toString("utf8");
}

function writeOctal(block: Buffer, offset: number, length: number, value: number): void {
  block.write(`${value.toString(8).padStart(length - 1, "0")}\0`, offset, "latin1");
}
