import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { platformMatchScore } from "./platform.ts";
import { type TarEntry, TarFormatError, TarParser } from "./tar-reader.ts";
import { tarArchive } from "./tar-writer.ts";
import { tempDir } from "./test-oci-helpers.ts";

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
    [{ os: "windows", architecture: "amd64" }, { os: "linux", architecture: "amd64" }, 0],
  ])("%j against %j is %i", (candidate, target, score) => {
    expect(platformMatchScore(candidate, target)).toBe(score);
  });
});
