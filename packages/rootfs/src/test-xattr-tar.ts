/**
 * Test layers with xattrs: PAX records the way GNU tar and Go's archive/tar write them
 * (`SCHILY.xattr.<name>=<raw bytes>`) or the way bsdtar does (`LIBARCHIVE.xattr.<percent-encoded
 * name>=<base64 without padding>`), in front of tar-writer's entries. Values are written verbatim,
 * so hostile ones are possible.
 */
import { type TarWriterEntry, tarEnd, tarEntryBytes } from "./tar-writer.ts";

export type XattrRecordStyle = "SCHILY" | "LIBARCHIVE";

export interface XattrTarEntry extends TarWriterEntry {
  xattrs?: Record<string, Buffer | string>;
  style?: XattrRecordStyle;
}

const BLOCK = 512;

/** One PAX record: `<length> <key>=<value>\n`, where the length counts itself. */
export function paxRecord(key: string | Buffer, value: Buffer): Buffer {
  const body = Buffer.concat([
    Buffer.from(" "),
    Buffer.from(key),
    Buffer.from("="),
    value,
    Buffer.from("\n"),
  ]);
  let total = body.length + 1;
  while (String(total).length + body.length !== total) total = String(total).length + body.length;
  return Buffer.concat([Buffer.from(String(total)), body]);
}

export function xattrRecords(xattrs: Record<string, Buffer | string>, style: XattrRecordStyle): Buffer {
  return Buffer.concat(
    Object.entries(xattrs).map(([name, raw]) => {
      const value = Buffer.isBuffer(raw) ? raw : Buffer.from(raw);
      if (style === "SCHILY") return paxRecord(`SCHILY.xattr.${name}`, value);
      const encoded = [...Buffer.from(name)]
        .map((byte) =>
          byte > 0x20 && byte < 0x7f && byte !== 0x25 && byte !== 0x3d
            ? String.fromCharCode(byte)
            : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`,
        )
        .join("");
      return paxRecord(
        `LIBARCHIVE.xattr.${encoded}`,
        Buffer.from(value.toString("base64").replace(/=+$/, "")),
      );
    }),
  );
}

/** A typeflag 'x' (or 'g') header block with `body` as its data, padded. */
export function paxHeader(body: Buffer, typeflag: "x" | "g" = "x"): Buffer {
  const block = Buffer.alloc(BLOCK);
  block.write("PaxHeaders/xattrs", 0, "utf8");
  block.write("0000644\0", 100, "latin1");
  block.write("0000000\0", 108, "latin1");
  block.write("0000000\0", 116, "latin1");
  block.write(`${body.length.toString(8).padStart(11, "0")}\0`, 124, "latin1");
  block.write("00000000000\0", 136, "latin1");
  block.write("        ", 148, "latin1");
  block.write(typeflag, 156, "latin1");
  block.write("ustar\0", 257, "latin1");
  block.write("00", 263, "latin1");
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += block[i]!;
  block.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  const padding = (BLOCK - (body.length % BLOCK)) % BLOCK;
  return Buffer.concat([block, body, Buffer.alloc(padding)]);
}

export function xattrEntryBytes(entry: XattrTarEntry): Buffer {
  const parts = tarEntryBytes(entry);
  if (!entry.xattrs || Object.keys(entry.xattrs).length === 0) return Buffer.concat(parts);
  return Buffer.concat([paxHeader(xattrRecords(entry.xattrs, entry.style ?? "SCHILY")), ...parts]);
}

/** A complete archive of `entries`, each with its xattr PAX header. */
export function xattrTarArchive(entries: readonly (XattrTarEntry | Buffer)[]): Buffer {
  return Buffer.concat([
    ...entries.map((entry) => (Buffer.isBuffer(entry) ? entry : xattrEntryBytes(entry))),
    tarEnd(),
  ]);
}

// include/uapi/linux/capability.h: VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, then
// permitted/inheritable words. CAP_NET_RAW is 13, CAP_NET_BIND_SERVICE 10.
export function capabilityV2(permitted: number, effective = true): Buffer {
  const value = Buffer.alloc(20);
  value.writeUInt32LE(0x02000000 | (effective ? 1 : 0), 0);
  value.writeUInt32LE(permitted, 4);
  return value;
}

export function capabilityV3(permitted: number, rootId: number): Buffer {
  const value = Buffer.alloc(24);
  value.writeUInt32LE(0x03000001, 0);
  value.writeUInt32LE(permitted, 4);
  value.writeUInt32LE(rootId, 20);
  return value;
}

export const CAP_NET_RAW = 1 << 13;

/** A version-2 POSIX ACL xattr value from [tag, perm, id] triples (tags as in posix_acl.h). */
export function posixAcl(entries: readonly [tag: number, perm: number, id?: number][]): Buffer {
  const value = Buffer.alloc(4 + entries.length * 8);
  value.writeUInt32LE(2, 0);
  entries.forEach(([tag, perm, id], index) => {
    value.writeUInt16LE(tag, 4 + index * 8);
    value.writeUInt16LE(perm, 6 + index * 8);
    value.writeUInt32LE(id ?? 0xffffffff, 8 + index * 8);
  });
  return value;
}

export const ACL = {
  USER_OBJ: 0x01,
  USER: 0x02,
  GROUP_OBJ: 0x04,
  GROUP: 0x08,
  MASK: 0x10,
  OTHER: 0x20,
} as const;

/** user::rw- user:<uid>:rw- group::r-- mask::rw- other::r-- */
export function sampleAccessAcl(uid = 1000): Buffer {
  return posixAcl([
    [ACL.USER_OBJ, 6],
    [ACL.USER, 6, uid],
    [ACL.GROUP_OBJ, 4],
    [ACL.MASK, 6],
    [ACL.OTHER, 4],
  ]);
}
