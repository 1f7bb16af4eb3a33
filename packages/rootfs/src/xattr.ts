/**
 * What an image layer may say about extended attributes, decided before anything is written: names,
 * namespaces, value formats (file capabilities, POSIX ACLs), what the file type and the host allow,
 * and the bounds that keep a hostile layer from flooding the unpacker. Pure: no file system access.
 */
import { z } from "zod";
import type { TarEntryType } from "./tar-reader.ts";

/** Linux limits (include/uapi/linux/limits.h): XATTR_NAME_MAX and XATTR_SIZE_MAX. */
export const XATTR_NAME_MAX = 255;
export const XATTR_SIZE_MAX = 65_536;

/** How a layer's extended attributes are applied: whether LSM labels are, and the bounds on what an untrusted layer may carry. */
export const xattrOptionsSchema = z
  .object({
    /**
     * Apply LSM labels and integrity data (every `security.*` name but `security.capability`:
     * security.selinux, security.SMACK64*, security.apparmor, security.ima, security.evm). Off by
     * default: they describe the host that built the image, and a wrong label can lock the guest out.
     */
    lsmLabels: z.boolean().default(false),
    /** At most this many xattr records on one entry. */
    maxPerEntry: z.number().int().positive().default(64),
    /**
     * At most this many bytes of names plus values on one entry. The default is what one ext4 inode
     * can hold (its in-inode space plus one 4 KiB block); more would make `mkfs.ext4 -d` fail later.
     */
    maxEntryBytes: z.number().int().positive().default(4096),
    /** At most this many xattr records in one layer. */
    maxLayerCount: z.number().int().positive().default(262_144),
    /** At most this many bytes of names plus values in one layer. */
    maxLayerBytes: z
      .number()
      .int()
      .positive()
      .default(64 * 1024 * 1024),
  })
  .strict();
/** How a layer's extended attributes are applied, as given. */
export type XattrOptions = z.input<typeof xattrOptionsSchema>;
export type XattrPolicy = z.output<typeof xattrOptionsSchema>;

/** What the unpacking process may write (from its effective capabilities). */
export interface XattrHostPrivileges {
  /** CAP_SETFCAP: `security.capability`. */
  setFileCapabilities: boolean;
  /** CAP_SYS_ADMIN: `trusted.*` and the other `security.*` names. */
  sysAdmin: boolean;
}

export interface Xattr {
  name: string;
  value: Buffer;
}

export type XattrVerdict = { action: "apply" } | { action: "ignore"; reason: string };

/** The layer is malformed or hostile: a name or value that must not be written. */
export class XattrRejectedError extends Error {
  override readonly name = "XattrRejectedError";
  readonly xattr: string;
  constructor(xattr: string, message: string) {
    super(message);
    this.xattr = xattr;
  }
}

/** Bytes of one record, as the limits count them. */
export function xattrBytes(xattr: Xattr): number {
  return Buffer.byteLength(xattr.name) + xattr.value.length;
}

/**
 * Decide one xattr of an entry of `type`: apply it, ignore it (with the reason, for the log), or
 * throw XattrRejectedError for a name or value no honest archiver writes.
 */
export function classifyXattr(
  xattr: Xattr,
  type: TarEntryType,
  policy: XattrPolicy,
  host: XattrHostPrivileges,
): XattrVerdict {
  const { name, value } = xattr;
  checkName(name);
  if (value.length > XATTR_SIZE_MAX) {
    throw new XattrRejectedError(name, `its ${value.length}-byte value exceeds Linux's ${XATTR_SIZE_MAX}`);
  }
  if (name.startsWith("user.")) {
    // fs/xattr.c xattr_permission(): user.* only on regular files and directories.
    if (type !== "file" && type !== "directory")
      return ignore("Linux keeps user.* xattrs only on regular files and directories");
    return { action: "apply" };
  }
  if (name.startsWith("trusted.overlay.")) {
    // overlayfs reads these from its layers (redirect, metacopy, origin, opaque): a tree that is
    // ever mounted as an overlay layer, on the host or in the guest, must not get them from an image.
    return ignore("overlayfs metadata, which would steer an overlay mount that uses this tree as a layer");
  }
  if (name.startsWith("trusted.")) {
    return host.sysAdmin
      ? { action: "apply" }
      : ignore("trusted.* needs CAP_SYS_ADMIN, which the unpacking process lacks");
  }
  if (name === "security.capability") {
    parseFileCapability(value, name);
    if (type !== "file") return ignore("file capabilities only act on regular files");
    return host.setFileCapabilities
      ? { action: "apply" }
      : ignore("security.capability needs CAP_SETFCAP, which the unpacking process lacks (unpack as root)");
  }
  if (name.startsWith("security.")) {
    if (!policy.lsmLabels) return ignore("LSM label or integrity data (pass xattrs.lsmLabels to keep it)");
    return host.sysAdmin
      ? { action: "apply" }
      : ignore("security.* labels need CAP_SYS_ADMIN, which the unpacking process lacks");
  }
  if (name === "system.posix_acl_access" || name === "system.posix_acl_default") {
    const entries = parsePosixAcl(value, name);
    if (type === "symlink") return ignore("Linux has no ACLs on symlinks");
    if (name === "system.posix_acl_default" && type !== "directory")
      return ignore("default ACLs exist only on directories");
    if (entries.length === 0) return ignore("an empty ACL means none");
    return { action: "apply" };
  }
  if (name.startsWith("system.")) {
    // system.nfs4_acl, system.richacl, ...: host file-system specific (umoci drops nfs4_acl too).
    return ignore("system.* xattrs other than POSIX ACLs are host file-system specific");
  }
  throw new XattrRejectedError(
    name,
    "its name is outside the user., trusted., security. and system. namespaces, which is all Linux has",
  );
}

function ignore(reason: string): XattrVerdict {
  return { action: "ignore", reason };
}

function checkName(name: string): void {
  const bytes = Buffer.byteLength(name);
  if (bytes > XATTR_NAME_MAX)
    throw new XattrRejectedError(
      name.slice(0, 64),
      `its name is ${bytes} bytes, more than Linux's ${XATTR_NAME_MAX}`,
    );
  // The tar reader decodes names as UTF-8; U+FFFD marks bytes that were not.
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is refused
  if (/[\u0000-\u001f\u007f\ufffd]/.test(name))
    throw new XattrRejectedError(name, "its name holds control characters or is not valid UTF-8");
  const dot = name.indexOf(".");
  if (dot <= 0 || dot === name.length - 1)
    throw new XattrRejectedError(name, "its name is not <namespace>.<name>");
}

/** A decoded `security.capability` xattr: version, effective flag, permitted and inheritable sets (and v3's root uid). */
export interface FileCapability {
  version: 2 | 3;
  effective: boolean;
  permitted: bigint;
  inheritable: bigint;
  /** v3 only: the uid that is root in the user namespace the capability is for. */
  rootId?: number;
}

// include/uapi/linux/capability.h: struct vfs_cap_data / vfs_ns_cap_data, little-endian.
const VFS_CAP_REVISION_MASK = 0xff000000;
const VFS_CAP_FLAGS_EFFECTIVE = 0x000001;
const VFS_CAP_REVISION_2 = 0x02000000;
const VFS_CAP_REVISION_3 = 0x03000000;
const XATTR_CAPS_SZ_2 = 20;
const XATTR_CAPS_SZ_3 = 24;

/**
 * Parse a `security.capability` value. Only the v2 and v3 formats are accepted: they are what the
 * kernel writes and what setxattr(2) accepts (security/commoncap.c validheader()); v1 is refused
 * by the kernel on write too.
 */
export function parseFileCapability(value: Buffer, name = "security.capability"): FileCapability {
  if (value.length < 4) throw new XattrRejectedError(name, `its ${value.length}-byte value is truncated`);
  const magic = value.readUInt32LE(0);
  const revision = (magic & VFS_CAP_REVISION_MASK) >>> 0;
  const flags = magic & ~VFS_CAP_REVISION_MASK;
  const expected =
    revision === VFS_CAP_REVISION_2 ? XATTR_CAPS_SZ_2 : revision === VFS_CAP_REVISION_3 ? XATTR_CAPS_SZ_3 : 0;
  if (expected === 0) {
    throw new XattrRejectedError(
      name,
      `its revision 0x${revision.toString(16)} is not v2 (0x02000000) or v3 (0x03000000)`,
    );
  }
  if (value.length !== expected) {
    throw new XattrRejectedError(
      name,
      `a v${revision >>> 24} capability is ${expected} bytes, this one is ${value.length}`,
    );
  }
  if ((flags & ~VFS_CAP_FLAGS_EFFECTIVE) !== 0) {
    throw new XattrRejectedError(name, `it sets unknown flag bits 0x${flags.toString(16)}`);
  }
  const word = (offset: number) => BigInt(value.readUInt32LE(offset));
  const capability: FileCapability = {
    version: revision === VFS_CAP_REVISION_2 ? 2 : 3,
    effective: (flags & VFS_CAP_FLAGS_EFFECTIVE) !== 0,
    permitted: word(4) | (word(12) << 32n),
    inheritable: word(8) | (word(16) << 32n),
  };
  if (capability.version === 3) capability.rootId = value.readUInt32LE(20);
  return capability;
}

export type PosixAclTag = "user_obj" | "user" | "group_obj" | "group" | "mask" | "other";

/** One entry of a decoded POSIX ACL xattr. */
export interface PosixAclEntry {
  tag: PosixAclTag;
  /** rwx bits. */
  perm: number;
  /** uid or gid of a named entry. */
  id?: number;
}

// include/uapi/linux/posix_acl_xattr.h and posix_acl.h.
const POSIX_ACL_XATTR_VERSION = 0x0002;
const ACL_TAGS: ReadonlyMap<number, PosixAclTag> = new Map([
  [0x01, "user_obj"],
  [0x02, "user"],
  [0x04, "group_obj"],
  [0x08, "group"],
  [0x10, "mask"],
  [0x20, "other"],
]);
const ACL_UNDEFINED_ID = 0xffffffff;

/**
 * Parse a `system.posix_acl_access`/`_default` value (version 2, 8-byte entries) and check it the
 * way the kernel's posix_acl_valid() does: entries in tag order, one owner, owning-group and other
 * entry, named users and groups sorted by id without repeats, and a mask when there are named ones.
 * An empty list (header only) is valid: it means "no ACL".
 */
export function parsePosixAcl(value: Buffer, name = "system.posix_acl_access"): PosixAclEntry[] {
  if (value.length < 4 || (value.length - 4) % 8 !== 0) {
    throw new XattrRejectedError(
      name,
      `its ${value.length}-byte value is not a 4-byte header plus 8-byte entries`,
    );
  }
  const version = value.readUInt32LE(0);
  if (version !== POSIX_ACL_XATTR_VERSION) {
    throw new XattrRejectedError(name, `its ACL version is ${version}, not ${POSIX_ACL_XATTR_VERSION}`);
  }
  const entries: PosixAclEntry[] = [];
  const counts = new Map<PosixAclTag, number>();
  let lastTagValue = 0;
  let lastId = -1;
  for (let offset = 4; offset < value.length; offset += 8) {
    const tagValue = value.readUInt16LE(offset);
    const perm = value.readUInt16LE(offset + 2);
    const id = value.readUInt32LE(offset + 4);
    const tag = ACL_TAGS.get(tagValue);
    if (tag === undefined)
      throw new XattrRejectedError(name, `it has an unknown entry tag 0x${tagValue.toString(16)}`);
    if (perm > 7)
      throw new XattrRejectedError(name, `its ${tag} entry has permission bits 0x${perm.toString(16)}`);
    if (tagValue < lastTagValue) throw new XattrRejectedError(name, "its entries are not in tag order");
    if (tagValue !== lastTagValue) lastId = -1;
    lastTagValue = tagValue;
    counts.set(tag, (counts.get(tag) ?? 0) + 1);
    if (tag === "user" || tag === "group") {
      if (id === ACL_UNDEFINED_ID) throw new XattrRejectedError(name, `its named ${tag} entry has no id`);
      if (id <= lastId)
        throw new XattrRejectedError(name, `its named ${tag} entries are not sorted by id without repeats`);
      lastId = id;
      entries.push({ tag, perm, id });
    } else {
      if ((counts.get(tag) ?? 0) > 1) throw new XattrRejectedError(name, `it has more than one ${tag} entry`);
      entries.push({ tag, perm });
    }
  }
  if (entries.length === 0) return entries;
  for (const required of ["user_obj", "group_obj", "other"] as const) {
    if (counts.get(required) !== 1) throw new XattrRejectedError(name, `it has no ${required} entry`);
  }
  if (((counts.get("user") ?? 0) > 0 || (counts.get("group") ?? 0) > 0) && counts.get("mask") !== 1) {
    throw new XattrRejectedError(name, "it has named user or group entries but no mask entry");
  }
  return entries;
}

const CAP_SYS_ADMIN = 21n;
const CAP_SETFCAP = 31n;

/** The unpacking process's xattr privileges, from CapEff in /proc/self/status (`status` for tests). */
export function hostXattrPrivileges(status: string): XattrHostPrivileges {
  const match = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  const effective = match ? BigInt(`0x${match[1]}`) : 0n;
  return {
    setFileCapabilities: ((effective >> CAP_SETFCAP) & 1n) === 1n,
    sysAdmin: ((effective >> CAP_SYS_ADMIN) & 1n) === 1n,
  };
}
