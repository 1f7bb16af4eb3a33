import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { platformMatchScore } from "./platform.ts";
import { type TarEntry, TarFormatError, TarParser } from "./tar-reader.ts";
import { tarArchive } from "./tar-writer.ts";
import { tempDir } from "./test-oci-helpers.ts";
import {
  CAP_NET_RAW,
  capabilityV2,
  paxHeader,
  paxRecord,
  sampleAccessAcl,
  xattrRecords,
  xattrTarArchive,
} from "./test-xattr-tar.ts";

function parse(archive: Buffer, chunkSize = archive.length): { entry: TarEntry; data: string }[] {
  const entries: { entry: TarEntry; data: string }[] = [];
  const parser = new TarParser({
    onEntry(entry) {
      const record = { entry, data: "" };
      entries.push(record);
      return {
        write: (chunk) => {
          record.data += chunk.toString();
        },
        end: () => undefined,
      };
    },
  });
  for (let offset = 0; offset < archive.length; offset += chunkSize)
    parser.write(archive.subarray(offset, offset + chunkSize));
  parser.end();
  return entries;
}

describe("TarParser", () => {
  it.each(["gnu", "pax", "ustar", "oldgnu"])(
    "reads what GNU tar writes in %s format, in chunks of any size",
    async (format) => {
      await using tmp = await tempDir();
      const src = join(tmp.path, "src");
      const long = `${"segment/".repeat(16)}file-${"x".repeat(60)}`;
      mkdirSync(join(src, long, ".."), { recursive: true });
      writeFileSync(join(src, long), "long name");
      writeFileSync(join(src, "small"), "s".repeat(1000));
      symlinkSync("small", join(src, "link"));
      execFileSync("tar", [
        `--format=${format}`,
        "--sort=name",
        "-cf",
        join(tmp.path, "a.tar"),
        "-C",
        src,
        ".",
      ]);
      const archive = readFileSync(join(tmp.path, "a.tar"));
      for (const chunkSize of [archive.length, 511, 7]) {
        const entries = parse(archive, chunkSize);
        const byPath = new Map(entries.map((e) => [e.entry.path.replace(/^\.\//, ""), e]));
        expect(byPath.get(long)?.data).toBe("long name");
        expect(byPath.get("small")?.data).toBe("s".repeat(1000));
        expect(byPath.get("link")?.entry).toMatchObject({ type: "symlink", linkPath: "small" });
      }
    },
  );

  it("applies PAX path, linkpath and mtime records", () => {
    const long = `dir/${"p".repeat(150)}`;
    const entries = parse(
      tarArchive([
        { path: long, content: "x" },
        { path: "l", type: "symlink", linkPath: long },
      ]),
    );
    expect(entries[0]!.entry.path).toBe(long);
    expect(entries[1]!.entry.linkPath).toBe(long);
  });

  it("rejects a bad checksum, a truncated archive and unsupported types", () => {
    const archive = tarArchive([{ path: "f", content: "data" }]);
    const damaged = Buffer.from(archive);
    damaged[0] = 0x41;
    expect(() => parse(damaged)).toThrow(TarFormatError);
    expect(() => parse(archive.subarray(0, 600))).toThrow(/truncated/);
    const sparse = Buffer.from(archive);
    sparse.write("S", 156, "latin1");
    let sum = 0;
    sparse.write("        ", 148, "latin1");
    for (let i = 0; i < 512; i++) sum += sparse[i]!;
    sparse.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
    expect(() => parse(sparse)).toThrow(/type 'S'/);
  });
});

const hasSetfattr = ["/usr/bin/setfattr", "/bin/setfattr"].some((path) => existsSync(path));
const isRoot = process.getuid?.() === 0;

describe("TarParser: xattr records", () => {
  it.skipIf(!hasSetfattr || !isRoot)(
    `reads the SCHILY.xattr records GNU tar --xattrs writes, byte for byte, in chunks of any size${
      !hasSetfattr || !isRoot ? " (skipped: needs root and setfattr: apt install attr)" : ""
    }`,
    async () => {
      await using tmp = await tempDir();
      const src = join(tmp.path, "src");
      mkdirSync(src);
      writeFileSync(join(src, "ping"), "p");
      writeFileSync(join(src, "data"), "d");
      const capability = capabilityV2(CAP_NET_RAW);
      const binary = Buffer.from([0, 10, 0x3d, 0xff, 0x20]);
      execFileSync("setfattr", [
        "-n",
        "security.capability",
        "-v",
        `0x${capability.toString("hex")}`,
        join(src, "ping"),
      ]);
      execFileSync("setfattr", ["-n", "user.bin", "-v", `0x${binary.toString("hex")}`, join(src, "data")]);
      execFileSync("setfattr", [
        "-n",
        "system.posix_acl_access",
        "-v",
        `0x${sampleAccessAcl().toString("hex")}`,
        join(src, "data"),
      ]);
      execFileSync("tar", [
        "--xattrs",
        "--xattrs-include=*",
        "--format=posix",
        "--sort=name",
        "-cf",
        join(tmp.path, "a.tar"),
        "-C",
        src,
        "ping",
        "data",
      ]);
      const archive = readFileSync(join(tmp.path, "a.tar"));
      for (const chunkSize of [archive.length, 100, 7]) {
        const byPath = new Map(parse(archive, chunkSize).map((e) => [e.entry.path, e.entry]));
        expect(byPath.get("ping")?.xattrs).toEqual([{ name: "security.capability", value: capability }]);
        const data = new Map(byPath.get("data")?.xattrs.map((x) => [x.name, x.value]));
        expect(data.get("user.bin")).toEqual(binary);
        expect(data.get("system.posix_acl_access")).toEqual(sampleAccessAcl());
        expect(byPath.get("data")?.mode).toBe(0o664);
      }
    },
  );

  it("reads bsdtar's LIBARCHIVE.xattr records (percent-encoded names, unpadded base64), and gives entries without records none", () => {
    const archive = xattrTarArchive([
      {
        path: "a",
        content: "x",
        style: "LIBARCHIVE",
        xattrs: { "user.we=ird %name é": Buffer.from([1, 2, 3, 4]) },
      },
      // bsdtar writes both forms; the same value twice is one xattr.
      Buffer.concat([
        paxHeader(
          Buffer.concat([
            xattrRecords({ "user.both": "v" }, "LIBARCHIVE"),
            xattrRecords({ "user.both": "v" }, "SCHILY"),
          ]),
        ),
        xattrTarArchive([{ path: "b", content: "y" }]).subarray(0, 1024),
      ]),
      { path: "c", content: "z" },
    ]);
    const entries = parse(archive, 13);
    expect(entries.map((e) => [e.entry.path, e.data])).toEqual([
      ["a", "x"],
      ["b", "y"],
      ["c", "z"],
    ]);
    expect(entries[0]!.entry.xattrs).toEqual([
      { name: "user.we=ird %name é", value: Buffer.from([1, 2, 3, 4]) },
    ]);
    expect(entries[1]!.entry.xattrs).toEqual([{ name: "user.both", value: Buffer.from("v") }]);
    expect(entries[2]!.entry.xattrs).toEqual([]);
    // A writer that leaves UTF-8 bytes unencoded gets the same name.
    const raw = xattrTarArchive([
      paxHeader(paxRecord("LIBARCHIVE.xattr.user.é%C3%A9", Buffer.from("AQ"))),
      { path: "f" },
    ]);
    expect(parse(raw)[0]!.entry.xattrs).toEqual([{ name: "user.éé", value: Buffer.from([1]) }]);
  });

  it("keeps records of consecutive PAX headers together, and ignores a global header's", () => {
    const archive = xattrTarArchive([
      paxHeader(xattrRecords({ "user.global": "g" }, "SCHILY"), "g"),
      paxHeader(xattrRecords({ "user.first": "1" }, "SCHILY")),
      { path: "f", content: "x", xattrs: { "user.second": "2" } },
      { path: "g", content: "y" },
    ]);
    const entries = parse(archive);
    expect(entries[0]!.entry.xattrs.map((x) => x.name)).toEqual(["user.first", "user.second"]);
    expect(entries[1]!.entry.xattrs).toEqual([]);
  });

  it.each([
    [
      "two values for one name",
      Buffer.concat([
        xattrRecords({ "user.a": "1" }, "SCHILY"),
        xattrRecords({ "user.a": "2" }, "LIBARCHIVE"),
      ]),
      /two different values/,
    ],
    ["a record without its newline", Buffer.from("25 SCHILY.xattr.user.a=bc"), /does not end in a newline/],
    [
      "a LIBARCHIVE value that is not base64",
      paxRecord("LIBARCHIVE.xattr.user.a", Buffer.from("a*b")),
      /not base64/,
    ],
    [
      "a bad percent escape",
      paxRecord("LIBARCHIVE.xattr.user.%zz", Buffer.from("YQ")),
      /malformed PAX record name/,
    ],
  ])("refuses %s", (_, records, message) => {
    const archive = xattrTarArchive([paxHeader(records), { path: "f", content: "x" }]);
    expect(() => parse(archive)).toThrow(TarFormatError);
    expect(() => parse(archive)).toThrow(message);
  });
});

describe("platformMatchScore", () => {
  it.each([
    [{ os: "linux", architecture: "arm64" }, { os: "linux", architecture: "arm64", variant: "v8" }, 1],
    [
      { os: "linux", architecture: "arm64", variant: "v8" },
      { os: "linux", architecture: "arm64", variant: "v8" },
      2,
    ],
    [
      { os: "linux", architecture: "arm64", variant: "v9" },
      { os: "linux", architecture: "arm64", variant: "v8" },
      0,
    ],
    [{ os: "linux", architecture: "amd64" }, { os: "linux", architecture: "amd64" }, 2],
    [{ os: "linux", architecture: "amd64", variant: "v1" }, { os: "linux", architecture: "amd64" }, 1],
    [{ os: "linux", architecture: "amd64", variant: "v3" }, { os: "linux", architecture: "amd64" }, 0],
    [{ os: "linux", architecture: "x86_64" }, { os: "linux", architecture: "amd64" }, 1],
    [{ os: "linux", architecture: "aarch64" }, { os: "linux", architecture: "arm64", variant: "v8" }, 1],
    // Names that are Object.prototype members are no architecture: they match nothing.
    [{ os: "linux", architecture: "constructor" }, { os: "linux", architecture: "amd64" }, 0],
    [{ os: "linux", architecture: "__proto__" }, { os: "linux", architecture: "arm64" }, 0],
    [{ os: "windows", architecture: "amd64" }, { os: "linux", architecture: "amd64" }, 0],
  ])("%j against %j is %i", (candidate, target, score) => {
    expect(platformMatchScore(candidate, target)).toBe(score);
  });
});
