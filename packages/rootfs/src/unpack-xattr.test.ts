import { execFileSync } from "node:child_process";
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "@sbx/arch";
import { describe, expect, it } from "vitest";
import { RootfsError } from "./errors.ts";
import { LayerApplier } from "./layer-apply.ts";
import { readOciLayout } from "./oci-layout.ts";
import { TarParser } from "./tar-reader.ts";
import { openFdCount, tempDir } from "./test-oci-helpers.ts";
import {
  ACL,
  CAP_NET_RAW,
  capabilityV2,
  paxHeader,
  paxRecord,
  posixAcl,
  sampleAccessAcl,
  type XattrTarEntry,
  xattrRecords,
  xattrTarArchive,
} from "./test-xattr-tar.ts";
import { type FixtureCompression, writeOciLayout } from "./testing/fixtures.ts";
import { unpackImage } from "./unpack.ts";
import { type XattrOptions, xattrOptionsSchema } from "./xattr.ts";

const amd64 = { os: "linux", architecture: "amd64" };
const isRoot = process.getuid?.() === 0;
const hasAttrTools = ["/usr/bin/getfattr", "/bin/getfattr"].some((path) => existsSync(path));
const selinuxActive = existsSync("/sys/fs/selinux/enforce");
const rootReason = !isRoot ? " (skipped: needs root for security.capability and trusted.*)" : "";
const toolReason = !hasAttrTools ? " (skipped: getfattr/setfattr not installed: apt install attr)" : "";
if (rootReason || toolReason) console.log(`unpack xattr tests:${rootReason}${toolReason}`);

/** Every xattr of `path` itself (a symlink's own), read through the kernel. */
function xattrsOf(path: string): Record<string, string> {
  // Bytes as latin1 characters, so getfattr's \ooo escapes and raw UTF-8 can both be undone.
  const out = execFileSync("getfattr", ["-h", "-d", "-m", "-", "-e", "hex", "--absolute-names", path], {
    encoding: "latin1",
  });
  const result: Record<string, string> = {};
  for (const line of out.split("\n")) {
    const equals = line.indexOf("=");
    if (line.startsWith("#") || equals === -1) continue;
    const name = line
      .slice(0, equals)
      .replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
    result[Buffer.from(name, "latin1").toString("utf8")] = line.slice(equals + 1);
  }
  return result;
}

const hex = (value: Buffer | string) => `0x${Buffer.from(value).toString("hex")}`;

function recordingLogger(): Logger & {
  lines: { level: string; obj: Record<string, unknown>; msg: string }[];
} {
  const lines: { level: string; obj: Record<string, unknown>; msg: string }[] = [];
  const at =
    (level: string) =>
    (obj: object, msg: string): void => {
      lines.push({ level, obj: obj as Record<string, unknown>, msg });
    };
  return { lines, debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

async function unpackLayers(
  root: string,
  layers: readonly (readonly (XattrTarEntry | Buffer)[])[],
  options: { xattrs?: XattrOptions; logger?: Logger; compression?: FixtureCompression } = {},
) {
  await writeOciLayout({
    dir: join(root, "layout"),
    images: [
      {
        platform: amd64,
        layers: layers.map((entries, index) => ({
          entries: xattrTarArchive(entries),
          compression: options.compression ?? (index % 2 === 0 ? "gzip" : "zstd"),
        })),
      },
    ],
  });
  return unpackImage({
    layout: await readOciLayout(join(root, "layout")),
    platform: "amd64",
    dest: join(root, "root"),
    ...(options.xattrs ? { xattrs: options.xattrs } : {}),
    ...(options.logger ? { logger: options.logger } : {}),
  });
}

const capNetRaw = capabilityV2(CAP_NET_RAW);
const defaultAcl = posixAcl([
  [ACL.USER_OBJ, 7],
  [ACL.USER, 7, 1000],
  [ACL.GROUP_OBJ, 5],
  [ACL.MASK, 7],
  [ACL.OTHER, 5],
]);
const selinuxLabel = "system_u:object_r:etc_t:s0";

/** Two layers covering every kind of xattr and the layer semantics they must survive. */
const LAYERS: readonly (readonly XattrTarEntry[])[] = [
  [
    { path: "usr/", type: "directory" },
    { path: "usr/bin/", type: "directory" },
    {
      path: "usr/bin/ping",
      content: "\x7fELF ping",
      mode: 0o755,
      uid: 0,
      gid: 0,
      mtime: 1_600_000_000,
      xattrs: { "security.capability": capNetRaw },
    },
    // Same inode: shares ping's capability (the hard link entry's own records are not applied).
    { path: "usr/bin/ping4", type: "hardlink", linkPath: "usr/bin/ping" },
    { path: "etc/", type: "directory" },
    {
      path: "etc/shared",
      content: "acl",
      mode: 0o664,
      uid: 0,
      gid: 0,
      style: "LIBARCHIVE",
      xattrs: { "system.posix_acl_access": sampleAccessAcl(), "user.origin": "layer one" },
    },
    { path: "etc/labelled", content: "x", xattrs: { "security.selinux": selinuxLabel } },
    { path: "link", type: "symlink", linkPath: "etc/shared", xattrs: { "trusted.sbx": "on the link" } },
    { path: "fifo", type: "fifo", xattrs: { "user.not-here": "x", "trusted.fifo": "kept" } },
    {
      path: "srv/",
      type: "directory",
      xattrs: { "system.posix_acl_default": defaultAcl, "user.dir": "one" },
    },
    { path: "srv/keep", content: "k", xattrs: { "user.k": Buffer.from([0, 10, 61, 255]) } },
    { path: "opaque/", type: "directory" },
    { path: "opaque/old", content: "lower", xattrs: { "user.x": "old" } },
    { path: "gone", content: "lower", xattrs: { "user.g": "g" } },
  ],
  [
    { path: ".wh.gone", content: "" },
    { path: "opaque/", type: "directory" },
    { path: "opaque/.wh..wh..opq", content: "" },
    { path: "opaque/new", content: "upper", xattrs: { "user.n": "new" } },
    // Declared again: its xattr set is replaced, so the default ACL goes.
    { path: "srv/", type: "directory", xattrs: { "user.dir": "two" } },
    { path: "etc/shared-again", type: "hardlink", linkPath: "etc/shared" },
    // A name that needs escaping on its way to setfattr; only bsdtar's percent-encoded records can
    // carry a name with "=" (a PAX keyword ends at the first one).
    { path: "etc/odd", content: "o", style: "LIBARCHIVE", xattrs: { "user.we=ird #name é": "v" } },
  ],
];

describe("unpackImage: extended attributes", () => {
  it.skipIf(!isRoot || !hasAttrTools)(
    `applies capabilities, ACLs, user.* and trusted.* through hard links, whiteouts, opaque dirs and redeclared dirs${rootReason}${toolReason}`,
    async () => {
      await using tmp = await tempDir();
      const fdsBefore = openFdCount();
      const logger = recordingLogger();
      const result = await unpackLayers(tmp.path, LAYERS, { logger });
      const root = join(tmp.path, "root");

      expect(xattrsOf(join(root, "usr/bin/ping"))).toEqual({ "security.capability": hex(capNetRaw) });
      expect(statSync(join(root, "usr/bin/ping4")).ino).toBe(statSync(join(root, "usr/bin/ping")).ino);
      expect(xattrsOf(join(root, "usr/bin/ping4"))).toEqual({ "security.capability": hex(capNetRaw) });
      // Written after chown and the content, which would have cleared it; mode and mtime intact.
      expect(statSync(join(root, "usr/bin/ping")).mode & 0o7777).toBe(0o755);
      expect(statSync(join(root, "usr/bin/ping")).mtimeMs).toBe(1_600_000_000_000);
      expect(execFileSync("getcap", [join(root, "usr/bin/ping")], { encoding: "utf8" })).toContain(
        "cap_net_raw=ep",
      );

      const shared = xattrsOf(join(root, "etc/shared"));
      expect(shared).toEqual({
        "system.posix_acl_access": hex(sampleAccessAcl()),
        "user.origin": hex("layer one"),
      });
      expect(statSync(join(root, "etc/shared")).mode & 0o777).toBe(0o664);
      expect(xattrsOf(join(root, "etc/shared-again"))).toEqual(shared);
      expect(xattrsOf(join(root, "link"))).toEqual({ "trusted.sbx": hex("on the link") });
      expect(xattrsOf(join(root, "fifo"))).toEqual({ "trusted.fifo": hex("kept") });
      expect(xattrsOf(join(root, "etc/odd"))).toEqual({ "user.we=ird #name é": hex("v") });

      expect(xattrsOf(join(root, "srv"))).toEqual({ "user.dir": hex("two") });
      expect(xattrsOf(join(root, "srv/keep"))).toEqual({ "user.k": "0x000a3dff" });
      expect(readdirSync(join(root, "opaque"))).toEqual(["new"]);
      expect(xattrsOf(join(root, "opaque/new"))).toEqual({ "user.n": hex("new") });
      expect(existsSync(join(root, "gone"))).toBe(false);

      // The LSM label is not applied (on an SELinux host the file has the host's own label instead).
      const labelled = xattrsOf(join(root, "etc/labelled"))["security.selinux"];
      expect(labelled === undefined || (selinuxActive && labelled !== hex(selinuxLabel))).toBe(true);
      expect(result.xattrs.ignored).toEqual([
        expect.objectContaining({ name: "security.selinux", count: 1, entry: "etc/labelled" }),
        expect.objectContaining({ name: "user.not-here", count: 1, entry: "fifo" }),
      ]);
      expect(logger.lines).toContainEqual(
        expect.objectContaining({
          level: "info",
          msg: "LSM labels in the image not applied",
          obj: expect.objectContaining({ xattr: "security.selinux", count: 1 }),
        }),
      );
      // ping, shared (2), link, fifo, srv (2, then 1), keep, old, gone, new, odd.
      expect(result.xattrs.applied).toBe(13);
      expect(readdirSync(tmp.path).sort()).toEqual(["layout", "root"]);
      expect(openFdCount()).toBe(fdsBefore);
    },
  );

  it.skipIf(!isRoot || !hasAttrTools || selinuxActive)(
    `applies LSM labels when the caller opts in${rootReason}${toolReason}${selinuxActive ? " (skipped: SELinux is active here)" : ""}`,
    async () => {
      await using tmp = await tempDir();
      const result = await unpackLayers(
        tmp.path,
        [[{ path: "etc/labelled", content: "x", xattrs: { "security.selinux": selinuxLabel } }]],
        { xattrs: { lsmLabels: true } },
      );
      expect(xattrsOf(join(tmp.path, "root/etc/labelled"))).toEqual({
        "security.selinux": hex(selinuxLabel),
      });
      expect(result.xattrs).toEqual({ applied: 1, ignored: [] });
    },
  );

  it.skipIf(!hasAttrTools)(
    `without CAP_SETFCAP and CAP_SYS_ADMIN, capabilities and trusted.* are reported as not applied, the rest is written${toolReason}`,
    async () => {
      await using tmp = await tempDir();
      const root = join(tmp.path, "root");
      mkdirSync(root);
      const logger = recordingLogger();
      const applier = new LayerApplier(root, {
        devices: "skip",
        fifos: "create",
        preserveOwnership: false,
        xattrs: xattrOptionsSchema.parse({}),
        hostPrivileges: { setFileCapabilities: false, sysAdmin: false },
        logger,
      });
      const parser = new TarParser(applier.beginLayer("sha256:layer"));
      parser.write(
        xattrTarArchive([
          {
            path: "ping",
            content: "p",
            xattrs: { "security.capability": capNetRaw, "trusted.t": "t", "user.u": "u" },
          },
        ]),
      );
      parser.end();
      applier.endLayer();
      applier.finish();
      expect(xattrsOf(join(root, "ping"))).toEqual({ "user.u": hex("u") });
      expect(applier.xattrSummary()).toEqual({
        applied: 1,
        ignored: [
          expect.objectContaining({
            name: "security.capability",
            reason: expect.stringContaining("CAP_SETFCAP"),
          }),
          expect.objectContaining({ name: "trusted.t", reason: expect.stringContaining("CAP_SYS_ADMIN") }),
        ],
      });
      expect(logger.lines.filter((line) => line.level === "warn").map((line) => line.obj.xattr)).toEqual([
        "security.capability",
        "trusted.t",
      ]);
    },
  );

  it("an image without xattrs does not need setfattr", async () => {
    await using tmp = await tempDir();
    const path = process.env.PATH;
    process.env.PATH = "/nonexistent";
    try {
      const result = await unpackLayers(tmp.path, [[{ path: "plain", content: "p" }]]);
      expect(result.xattrs).toEqual({ applied: 0, ignored: [] });
    } finally {
      process.env.PATH = path;
    }
  });

  it("says which tool to install when an image has xattrs and setfattr is missing", async () => {
    await using tmp = await tempDir();
    const path = process.env.PATH;
    process.env.PATH = "/nonexistent";
    try {
      const error = await unpackLayers(tmp.path, [
        [{ path: "f", content: "p", xattrs: { "user.a": "b" } }],
      ]).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(RootfsError);
      expect(error).toMatchObject({ code: "TOOL_MISSING", details: { tool: "setfattr", package: "attr" } });
    } finally {
      process.env.PATH = path;
    }
    expect(readdirSync(tmp.path)).toEqual(["layout"]);
  });
});

const oversized = Buffer.alloc(5000, 0x61);
const capabilityV1 = Buffer.alloc(12);
capabilityV1.writeUInt32LE(0x01000001, 0);

describe("unpackImage: hostile xattrs", () => {
  const cases: {
    name: string;
    layer: (XattrTarEntry | Buffer)[];
    options?: XattrOptions;
    code: string;
    match: RegExp;
  }[] = [
    {
      name: "a v1 file capability",
      layer: [{ path: "f", content: "x", xattrs: { "security.capability": capabilityV1 } }],
      code: "LAYER_UNSAFE_ENTRY",
      match: /security\.capability.*revision 0x1000000 is not v2/,
    },
    {
      name: "a v2 file capability of the wrong length",
      layer: [
        {
          path: "f",
          content: "x",
          xattrs: { "security.capability": Buffer.concat([capNetRaw, Buffer.alloc(4)]) },
        },
      ],
      code: "LAYER_UNSAFE_ENTRY",
      match: /v2 capability is 20 bytes, this one is 24/,
    },
    {
      name: "a capability with unknown flag bits",
      layer: [
        {
          path: "f",
          content: "x",
          xattrs: { "security.capability": Buffer.from([0x03, 0, 0, 2, ...Buffer.alloc(16)]) },
        },
      ],
      code: "LAYER_UNSAFE_ENTRY",
      match: /unknown flag bits 0x3/,
    },
    {
      name: "an ACL of another version",
      layer: [{ path: "f", content: "x", xattrs: { "system.posix_acl_access": Buffer.from([1, 0, 0, 0]) } }],
      code: "LAYER_UNSAFE_ENTRY",
      match: /ACL version is 1, not 2/,
    },
    {
      name: "a truncated ACL",
      layer: [
        { path: "f", content: "x", xattrs: { "system.posix_acl_access": sampleAccessAcl().subarray(0, 11) } },
      ],
      code: "LAYER_UNSAFE_ENTRY",
      match: /not a 4-byte header plus 8-byte entries/,
    },
    {
      name: "an ACL with named users and no mask",
      layer: [
        {
          path: "f",
          content: "x",
          xattrs: {
            "system.posix_acl_access": posixAcl([
              [ACL.USER_OBJ, 6],
              [ACL.USER, 6, 1000],
              [ACL.GROUP_OBJ, 4],
              [ACL.OTHER, 4],
            ]),
          },
        },
      ],
      code: "LAYER_UNSAFE_ENTRY",
      match: /no mask entry/,
    },
    {
      name: "a name outside Linux's namespaces",
      layer: [{ path: "f", content: "x", xattrs: { "evil.name": "x" } }],
      code: "LAYER_UNSAFE_ENTRY",
      match: /outside the user\., trusted\., security\. and system\. namespaces/,
    },
    {
      name: "a name with a newline",
      layer: [{ path: "f", content: "x", xattrs: { "user.a\nb": "x" } }],
      code: "LAYER_UNSAFE_ENTRY",
      match: /control characters/,
    },
    {
      name: "a name longer than 255 bytes",
      layer: [{ path: "f", content: "x", xattrs: { [`user.${"n".repeat(251)}`]: "x" } }],
      code: "LAYER_UNSAFE_ENTRY",
      match: /256 bytes, more than Linux's 255/,
    },
    {
      name: "a name that is not UTF-8",
      layer: [
        Buffer.concat([
          paxHeader(paxRecord(Buffer.from("SCHILY.xattr.user.\xff", "latin1"), Buffer.from("x"))),
          xattrTarArchive([{ path: "f", content: "x" }]).subarray(0, 1024),
        ]),
      ],
      code: "LAYER_UNSAFE_ENTRY",
      match: /not valid UTF-8/,
    },
    {
      name: "a malformed capability on a hard link (refused even where it would not be applied)",
      layer: [
        { path: "f", content: "x" },
        { path: "g", type: "hardlink", linkPath: "f", xattrs: { "security.capability": Buffer.alloc(3) } },
      ],
      code: "LAYER_UNSAFE_ENTRY",
      match: /"g".*truncated/,
    },
    {
      name: "an oversized value",
      layer: [{ path: "f", content: "x", xattrs: { "user.big": oversized } }],
      code: "UNPACK_LIMIT_EXCEEDED",
      match: /5008 bytes of xattrs on one entry, more than maxEntryBytes 4096/,
    },
    {
      name: "too many xattrs on one entry",
      layer: [
        {
          path: "f",
          content: "x",
          xattrs: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`user.n${i}`, "v"])),
        },
      ],
      code: "UNPACK_LIMIT_EXCEEDED",
      match: /65 xattrs on one entry, more than maxPerEntry 64/,
    },
    {
      name: "too many xattrs in one layer",
      layer: Array.from({ length: 11 }, (_, i) => ({
        path: `f${i}`,
        content: "x",
        xattrs: { "user.a": "b" },
      })),
      options: { maxLayerCount: 10 },
      code: "UNPACK_LIMIT_EXCEEDED",
      match: /more than maxLayerCount 10 xattrs in one layer/,
    },
    {
      name: "too many xattr bytes in one layer",
      layer: Array.from({ length: 3 }, (_, i) => ({
        path: `f${i}`,
        content: "x",
        xattrs: { "user.a": "b".repeat(100) },
      })),
      options: { maxLayerBytes: 250 },
      code: "UNPACK_LIMIT_EXCEEDED",
      match: /more than maxLayerBytes 250 bytes/,
    },
    {
      name: "two different values for one name (SCHILY and LIBARCHIVE records)",
      layer: [
        Buffer.concat([
          paxHeader(
            Buffer.concat([
              xattrRecords({ "user.a": "one" }, "SCHILY"),
              xattrRecords({ "user.a": "two" }, "LIBARCHIVE"),
            ]),
          ),
          xattrTarArchive([{ path: "f", content: "x" }]).subarray(0, 1024),
        ]),
      ],
      code: "LAYER_INVALID",
      match: /two different values/,
    },
    {
      name: "a LIBARCHIVE value that is not base64",
      layer: [
        Buffer.concat([
          paxHeader(paxRecord("LIBARCHIVE.xattr.user.a", Buffer.from("not base64!"))),
          xattrTarArchive([{ path: "f", content: "x" }]).subarray(0, 1024),
        ]),
      ],
      code: "LAYER_INVALID",
      match: /is not base64/,
    },
  ];

  it.each(cases)(
    "refuses $name with $code and leaves nothing behind",
    async ({ layer, options, code, match }) => {
      await using tmp = await tempDir();
      const fdsBefore = openFdCount();
      const error = await unpackLayers(tmp.path, [layer], options ? { xattrs: options } : {}).catch(
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(RootfsError);
      expect((error as RootfsError).code).toBe(code);
      expect((error as RootfsError).message).toMatch(match);
      expect(readdirSync(tmp.path)).toEqual(["layout"]);
      expect(openFdCount()).toBe(fdsBefore);
    },
  );

  it("validates the xattr options", async () => {
    await using tmp = await tempDir();
    const error = await unpackLayers(tmp.path, [[{ path: "f", content: "x" }]], {
      xattrs: { maxPerEntry: 0 } as XattrOptions,
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "INVALID_OPTIONS" });
    expect(readdirSync(tmp.path)).toEqual(["layout"]);
  });

  it("ignores xattrs in a global PAX header, as Go's archive/tar does", async () => {
    await using tmp = await tempDir();
    const result = await unpackLayers(tmp.path, [
      [
        paxHeader(xattrRecords({ "security.capability": Buffer.alloc(3) }, "SCHILY"), "g"),
        { path: "f", content: "x" },
      ],
    ]);
    expect(result.xattrs).toEqual({ applied: 0, ignored: [] });
    expect(lstatSync(join(tmp.path, "root/f")).isFile()).toBe(true);
    expect(readFileSync(join(tmp.path, "root/f"), "utf8")).toBe("x");
  });
});
