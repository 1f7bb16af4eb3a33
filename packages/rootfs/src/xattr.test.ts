import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { tempDir } from "./test-oci-helpers.ts";
import { ACL, CAP_NET_RAW, capabilityV2, capabilityV3, posixAcl, sampleAccessAcl } from "./test-xattr-tar.ts";
import {
  classifyXattr,
  hostXattrPrivileges,
  parseFileCapability,
  parsePosixAcl,
  XattrRejectedError,
  xattrOptionsSchema,
} from "./xattr.ts";
import { escapeDumpText, XattrWriter } from "./xattr-writer.ts";

const isRoot = process.getuid?.() === 0;
const hasSetfattr = ["/usr/bin/setfattr", "/bin/setfattr"].some((path) => existsSync(path));
const kernelReason = !isRoot || !hasSetfattr ? " (skipped: needs root and setfattr: apt install attr)" : "";
if (kernelReason) console.log(`xattr kernel agreement tests${kernelReason}`);

const defaults = xattrOptionsSchema.parse({});
const allowed = { setFileCapabilities: true, sysAdmin: true };
const verdict = (name: string, value: Buffer | string, type: Parameters<typeof classifyXattr>[1] = "file") =>
  classifyXattr({ name, value: Buffer.from(value) }, type, defaults, allowed);

describe("parseFileCapability", () => {
  it("reads v2 and v3 values", () => {
    expect(parseFileCapability(capabilityV2(CAP_NET_RAW))).toEqual({
      version: 2,
      effective: true,
      permitted: BigInt(CAP_NET_RAW),
      inheritable: 0n,
    });
    expect(parseFileCapability(capabilityV2(CAP_NET_RAW, false)).effective).toBe(false);
    expect(parseFileCapability(capabilityV3(CAP_NET_RAW, 100_000))).toMatchObject({
      version: 3,
      rootId: 100_000,
    });
    const high = capabilityV2(0);
    high.writeUInt32LE(1 << (38 - 32), 12); // CAP_PERFMON lives in the second word
    expect(parseFileCapability(high).permitted).toBe(1n << 38n);
  });

  it.each([
    ["empty", Buffer.alloc(0), /truncated/],
    ["v1", Buffer.from([1, 0, 0, 1, ...Buffer.alloc(8)]), /revision 0x1000000/],
    ["v2 too short", capabilityV2(CAP_NET_RAW).subarray(0, 16), /20 bytes, this one is 16/],
    ["v3 too long", Buffer.concat([capabilityV3(1, 0), Buffer.alloc(1)]), /24 bytes, this one is 25/],
    ["unknown flags", Buffer.from([0x81, 0, 0, 2, ...Buffer.alloc(16)]), /flag bits 0x81/],
  ])("refuses %s", (_, value, message) => {
    expect(() => parseFileCapability(value)).toThrow(XattrRejectedError);
    expect(() => parseFileCapability(value)).toThrow(message);
  });
});

describe("parsePosixAcl", () => {
  it("reads a valid ACL, and an empty one", () => {
    expect(parsePosixAcl(sampleAccessAcl(1000))).toEqual([
      { tag: "user_obj", perm: 6 },
      { tag: "user", perm: 6, id: 1000 },
      { tag: "group_obj", perm: 4 },
      { tag: "mask", perm: 6 },
      { tag: "other", perm: 4 },
    ]);
    expect(parsePosixAcl(posixAcl([]))).toEqual([]);
  });

  it.each([
    ["a bad length", Buffer.concat([sampleAccessAcl(), Buffer.alloc(3)]), /8-byte entries/],
    [
      "an unknown tag",
      posixAcl([
        [ACL.USER_OBJ, 6],
        [0x40, 4],
        [ACL.GROUP_OBJ, 4],
        [ACL.OTHER, 4],
      ]),
      /tag 0x40/,
    ],
    [
      "permission bits above rwx",
      posixAcl([
        [ACL.USER_OBJ, 8],
        [ACL.GROUP_OBJ, 4],
        [ACL.OTHER, 4],
      ]),
      /bits 0x8/,
    ],
    [
      "entries out of order",
      posixAcl([
        [ACL.GROUP_OBJ, 4],
        [ACL.USER_OBJ, 6],
        [ACL.OTHER, 4],
      ]),
      /tag order/,
    ],
    [
      "two owner entries",
      posixAcl([
        [ACL.USER_OBJ, 6],
        [ACL.USER_OBJ, 6],
        [ACL.GROUP_OBJ, 4],
        [ACL.OTHER, 4],
      ]),
      /more than one user_obj/,
    ],
    [
      "no other entry",
      posixAcl([
        [ACL.USER_OBJ, 6],
        [ACL.GROUP_OBJ, 4],
      ]),
      /no other entry/,
    ],
    [
      "repeated named users",
      posixAcl([
        [ACL.USER_OBJ, 6],
        [ACL.USER, 6, 5],
        [ACL.USER, 4, 5],
        [ACL.GROUP_OBJ, 4],
        [ACL.MASK, 6],
        [ACL.OTHER, 4],
      ]),
      /sorted by id without repeats/,
    ],
    [
      "a named user without an id",
      posixAcl([
        [ACL.USER_OBJ, 6],
        [ACL.USER, 6],
        [ACL.GROUP_OBJ, 4],
        [ACL.MASK, 6],
        [ACL.OTHER, 4],
      ]),
      /has no id/,
    ],
  ])("refuses %s", (_, value, message) => {
    expect(() => parsePosixAcl(value)).toThrow(message);
  });
});

describe("classifyXattr", () => {
  it("applies capabilities, ACLs, user.* and trusted.* where Linux keeps them", () => {
    expect(verdict("security.capability", capabilityV2(CAP_NET_RAW))).toEqual({ action: "apply" });
    expect(verdict("system.posix_acl_access", sampleAccessAcl(), "directory")).toEqual({ action: "apply" });
    expect(verdict("system.posix_acl_default", sampleAccessAcl(), "directory")).toEqual({ action: "apply" });
    expect(verdict("user.a", "b", "directory")).toEqual({ action: "apply" });
    expect(verdict("trusted.a", "b", "symlink")).toEqual({ action: "apply" });
    expect(verdict("user.empty", "")).toEqual({ action: "apply" });
  });

  it.each([
    ["user.a", "b", "symlink", /only on regular files and directories/],
    ["user.a", "b", "fifo", /only on regular files and directories/],
    ["security.capability", capabilityV2(CAP_NET_RAW), "directory", /only act on regular files/],
    ["system.posix_acl_default", sampleAccessAcl(), "file", /only on directories/],
    ["system.posix_acl_default", posixAcl([]), "directory", /empty ACL means none/],
    ["system.posix_acl_access", posixAcl([]), "file", /empty ACL means none/],
    ["system.posix_acl_access", sampleAccessAcl(), "symlink", /no ACLs on symlinks/],
    ["security.selinux", "system_u:object_r:bin_t:s0", "file", /LSM label/],
    ["security.ima", "\x03\x02", "file", /LSM label/],
    ["system.nfs4_acl", "x", "file", /host file-system specific/],
    ["trusted.overlay.redirect", "/etc", "directory", /overlayfs metadata/],
  ] as const)("ignores %s on a %s: %s", (name, value, type, reason) => {
    expect(verdict(name, value, type)).toEqual({ action: "ignore", reason: expect.stringMatching(reason) });
  });

  it("applies LSM labels when asked, and reports what the host cannot write", () => {
    const withLabels = xattrOptionsSchema.parse({ lsmLabels: true });
    const label = { name: "security.selinux", value: Buffer.from("x") };
    expect(classifyXattr(label, "file", withLabels, allowed)).toEqual({ action: "apply" });
    const none = { setFileCapabilities: false, sysAdmin: false };
    expect(classifyXattr(label, "file", withLabels, none)).toMatchObject({ action: "ignore" });
    expect(
      classifyXattr({ name: "security.capability", value: capabilityV2(1) }, "file", defaults, none),
    ).toMatchObject({ action: "ignore", reason: expect.stringContaining("CAP_SETFCAP") });
    expect(
      classifyXattr({ name: "trusted.x", value: Buffer.from("x") }, "file", defaults, none),
    ).toMatchObject({
      action: "ignore",
      reason: expect.stringContaining("CAP_SYS_ADMIN"),
    });
    // A malformed value is refused even where it would be ignored.
    expect(() =>
      classifyXattr({ name: "security.capability", value: Buffer.alloc(2) }, "file", defaults, none),
    ).toThrow(XattrRejectedError);
  });

  it.each([
    ["evil.x", /outside the user\., trusted\., security\. and system\. namespaces/],
    ["user.", /not <namespace>.<name>/],
    ["user", /not <namespace>.<name>/],
    ["user.a\u0000b", /control characters/],
    ["user.\ufffd", /not valid UTF-8/],
    [`user.${"x".repeat(251)}`, /more than Linux's 255/],
  ])("refuses the name %j", (name, message) => {
    expect(() => verdict(name, "v")).toThrow(message);
  });

  it("refuses a value larger than Linux's 64 KiB", () => {
    expect(() => verdict("user.big", Buffer.alloc(65_537))).toThrow(/exceeds Linux's 65536/);
  });
});

describe("hostXattrPrivileges", () => {
  it("reads CAP_SETFCAP (31) and CAP_SYS_ADMIN (21) from CapEff", () => {
    expect(hostXattrPrivileges("CapInh:\t0\nCapEff:\t000001ffffffffff\n")).toEqual({
      setFileCapabilities: true,
      sysAdmin: true,
    });
    expect(hostXattrPrivileges("CapEff:\t0000000080000000\n")).toEqual({
      setFileCapabilities: true,
      sysAdmin: false,
    });
    expect(hostXattrPrivileges("CapEff:\t0000000000000000\n")).toEqual({
      setFileCapabilities: false,
      sysAdmin: false,
    });
    expect(hostXattrPrivileges("")).toEqual({ setFileCapabilities: false, sysAdmin: false });
    const own = hostXattrPrivileges(readFileSync("/proc/self/status", "utf8"));
    if (isRoot) expect(own.setFileCapabilities).toBe(true);
  });
});

/**
 * The parsers must not be stricter or looser than the kernel where it matters: every value they
 * accept, the kernel stores; the malformed ones they refuse, the kernel refuses too (EINVAL).
 */
describe("the parsers agree with the kernel", () => {
  function kernelAccepts(path: string, name: string, value: Buffer): boolean {
    try {
      execFileSync("setfattr", ["-n", name, "-v", `0x${value.toString("hex")}`, path], { stdio: "pipe" });
      execFileSync("setfattr", ["-x", name, path], { stdio: "pipe" });
      return true;
    } catch {
      return false;
    }
  }

  it.skipIf(!!kernelReason)(`file capabilities${kernelReason}`, async () => {
    await using tmp = await tempDir();
    const file = join(tmp.path, "f");
    writeFileSync(file, "x");
    const values = [
      capabilityV2(CAP_NET_RAW),
      capabilityV2(CAP_NET_RAW, false),
      capabilityV3(CAP_NET_RAW, 0),
      Buffer.from([1, 0, 0, 1, ...Buffer.alloc(8)]),
      capabilityV2(CAP_NET_RAW).subarray(0, 16),
      Buffer.concat([capabilityV2(CAP_NET_RAW), Buffer.alloc(4)]),
      Buffer.alloc(3),
    ];
    for (const value of values) {
      let ours = true;
      try {
        parseFileCapability(value);
      } catch {
        ours = false;
      }
      expect({ value: value.toString("hex"), accepted: ours }).toEqual({
        value: value.toString("hex"),
        accepted: kernelAccepts(file, "security.capability", value),
      });
    }
  });

  it.skipIf(!!kernelReason)(`POSIX ACLs${kernelReason}`, async () => {
    await using tmp = await tempDir();
    const dir = join(tmp.path, "d");
    mkdirSync(dir);
    const values = [
      sampleAccessAcl(),
      posixAcl([
        [ACL.USER_OBJ, 7],
        [ACL.GROUP_OBJ, 5],
        [ACL.OTHER, 5],
      ]),
      posixAcl([
        [ACL.USER_OBJ, 7],
        [ACL.GROUP, 5, 10],
        [ACL.GROUP_OBJ, 5],
        [ACL.OTHER, 5],
      ]),
      posixAcl([
        [ACL.USER_OBJ, 6],
        [ACL.USER, 6, 1000],
        [ACL.GROUP_OBJ, 4],
        [ACL.OTHER, 4],
      ]),
      posixAcl([
        [ACL.GROUP_OBJ, 4],
        [ACL.USER_OBJ, 6],
        [ACL.OTHER, 4],
      ]),
      Buffer.from([1, 0, 0, 0]),
      Buffer.concat([sampleAccessAcl(), Buffer.alloc(3)]),
    ];
    for (const value of values) {
      let ours = true;
      try {
        if (parsePosixAcl(value).length === 0) ours = false;
      } catch {
        ours = false;
      }
      expect({ value: value.toString("hex"), accepted: ours }).toEqual({
        value: value.toString("hex"),
        accepted: kernelAccepts(dir, "system.posix_acl_access", value),
      });
    }
  });
});

describe("XattrWriter", () => {
  it("escapes paths and names for setfattr's dump format", () => {
    expect(escapeDumpText("a/b.c_d-e+f")).toBe("a/b.c_d-e+f");
    expect(escapeDumpText("a b\n=#\\é")).toBe("a\\040b\\012\\075\\043\\134\\303\\251");
  });

  it.skipIf(!hasSetfattr)(
    `writes names and paths that need escaping, batched, and drops what was removed${hasSetfattr ? "" : " (skipped: setfattr not installed: apt install attr)"}`,
    async () => {
      await using tmp = await tempDir();
      const odd = join(tmp.path, "a dir\nwith=odd #chars é");
      mkdirSync(odd);
      const file = join(odd, "file");
      writeFileSync(file, "x");
      const gone = join(tmp.path, "gone");
      mkdirSync(gone);
      writeFileSync(join(gone, "child"), "x");
      const writer = new XattrWriter({ maxBatchBytes: 64 });
      writer.add(file, [
        { name: "user.a=b #c\nd", value: Buffer.from([0, 1, 10, 255]) },
        { name: "user.empty", value: Buffer.alloc(0) },
      ]);
      writer.add(odd, [{ name: "user.dir", value: Buffer.from("d") }]);
      writer.add(join(gone, "child"), [{ name: "user.c", value: Buffer.from("c") }]);
      expect(writer.full).toBe(true);
      writer.drop(gone, true);
      expect(writer.has(join(gone, "child"))).toBe(false);
      writer.flush();
      expect(writer.written).toBe(3);
      const read = (path: string, name: string) =>
        execFileSync("getfattr", ["--only-values", "-n", name, "--absolute-names", path]);
      expect(read(file, "user.a=b #c\nd")).toEqual(Buffer.from([0, 1, 10, 255]));
      expect(read(file, "user.empty")).toEqual(Buffer.alloc(0));
      expect(read(odd, "user.dir").toString()).toBe("d");
      writer.remove(odd, ["user.dir", "user.never-written"]);
      expect(() => read(odd, "user.dir")).toThrow();
      expect(() => read(join(gone, "child"), "user.c")).toThrow();
    },
  );

  it.skipIf(!!kernelReason)(
    `replays a batch the host partly refuses record by record, reporting only the refused ones${kernelReason}`,
    async () => {
      await using tmp = await tempDir();
      const locked = join(tmp.path, "locked");
      const open = join(tmp.path, "open");
      writeFileSync(locked, "x");
      writeFileSync(open, "y");
      // The kernel refuses any xattr change on an immutable file with EPERM, root or not.
      execFileSync("chattr", ["+i", locked]);
      try {
        const refused: [string, string, string][] = [];
        const writer = new XattrWriter({ onRefused: (...args) => refused.push(args) });
        writer.add(locked, [{ name: "user.a", value: Buffer.from("a") }]);
        writer.add(open, [
          { name: "user.b", value: Buffer.from("b") },
          { name: "user.empty", value: Buffer.alloc(0) },
          { name: "user.big", value: Buffer.alloc(3000, 7) },
        ]);
        writer.flush();
        expect(refused).toEqual([[locked, "user.a", expect.stringContaining("Operation not permitted")]]);
        expect(writer.written).toBe(3);
        const read = (name: string) =>
          execFileSync("getfattr", ["--only-values", "-n", name, "--absolute-names", open]);
        expect(read("user.b").toString()).toBe("b");
        expect(read("user.empty")).toEqual(Buffer.alloc(0));
        expect(read("user.big")).toEqual(Buffer.alloc(3000, 7));
      } finally {
        execFileSync("chattr", ["-i", locked]);
      }
    },
  );

  it.skipIf(!hasSetfattr)(
    `fails with the host's reason when a failure is not a refusal${hasSetfattr ? "" : " (skipped: setfattr not installed)"}`,
    async () => {
      await using tmp = await tempDir();
      const writer = new XattrWriter();
      writer.add(join(tmp.path, "missing"), [{ name: "user.a", value: Buffer.from("a") }]);
      expect(() => writer.flush()).toThrow(/No such file or directory/);
    },
  );
});
