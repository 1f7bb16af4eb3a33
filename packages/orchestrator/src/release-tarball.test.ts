import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { extractTarMembers } from "./release-tarball.ts";
import { openFdCount } from "./test-capabilities.ts";

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "sbx-release-tarball-"));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A .tgz of `files` (path → content) made by GNU tar, in the given format. */
async function tgz(name: string, files: Record<string, string | Buffer>, format = "gnu"): Promise<string> {
  const src = join(root, `${name}-src`);
  for (const [path, content] of Object.entries(files)) {
    await mkdir(join(src, path, ".."), { recursive: true });
    await writeFile(join(src, path), content);
  }
  const archive = join(root, `${name}.tgz`);
  execFileSync("tar", ["czf", archive, `--format=${format}`, "-C", src, ...Object.keys(files)]);
  return archive;
}

describe("extractTarMembers", () => {
  it("writes only the wanted members, found through ustar prefixes, pax and GNU long names", async () => {
    const long = `release-v1.14.2-x86_64/${"d".repeat(90)}/firecracker-v1.14.2-x86_64`;
    for (const format of ["gnu", "pax", "ustar"]) {
      const archive = await tgz(
        `names-${format}`,
        {
          "release-v1.14.2-x86_64/LICENSE": "license",
          [long]: "the binary",
          "release-v1.14.2-x86_64/jailer-v1.14.2-x86_64": Buffer.alloc(70_000, 3),
        },
        format,
      );
      const out = join(root, `out-${format}`);
      await mkdir(out);
      const fds = openFdCount();
      const found = await extractTarMembers(
        archive,
        new Map([
          [long, join(out, "firecracker")],
          ["release-v1.14.2-x86_64/jailer-v1.14.2-x86_64", join(out, "jailer")],
          ["release-v1.14.2-x86_64/missing", join(out, "missing")],
        ]),
        1024 * 1024,
      );
      expect([...found].sort()).toEqual([long, "release-v1.14.2-x86_64/jailer-v1.14.2-x86_64"]);
      expect(readFileSync(join(out, "firecracker"), "utf8")).toBe("the binary");
      expect(readFileSync(join(out, "jailer"))).toEqual(Buffer.alloc(70_000, 3));
      expect(readdirSync(out).sort()).toEqual(["firecracker", "jailer"]);
      expect(openFdCount()).toBe(fds);
    }
  });

  it("refuses a member over the size limit, a truncated archive and something that is not gzip", async () => {
    const archive = await tgz("big", { "a/big": Buffer.alloc(200_000) });
    const out = join(root, "out-big");
    await mkdir(out);
    await expect(
      extractTarMembers(archive, new Map([["a/big", join(out, "big")]]), 100_000),
    ).rejects.toMatchObject({
      code: "ARTIFACT_INVALID",
    });
    expect(readdirSync(out)).toEqual([]);

    const truncated = join(root, "truncated.tgz");
    await writeFile(truncated, readFileSync(archive).subarray(0, 200));
    await expect(
      extractTarMembers(truncated, new Map([["a/big", join(out, "t")]]), 1_000_000),
    ).rejects.toMatchObject({
      code: "ARTIFACT_INVALID",
    });

    const notGzip = join(root, "not.tgz");
    await writeFile(notGzip, "<html>404</html>");
    await expect(
      extractTarMembers(notGzip, new Map([["a/big", join(out, "n")]]), 1_000_000),
    ).rejects.toMatchObject({
      code: "ARTIFACT_INVALID",
    });

    const badSize = join(root, "bad-size.tgz");
    const header = Buffer.alloc(512);
    header.write("a/big", 0);
    header.write("zzzzzzzzzzz", 124);
    await writeFile(badSize, gzipSync(Buffer.concat([header, Buffer.alloc(1024)])));
    await expect(
      extractTarMembers(badSize, new Map([["a/big", join(out, "b")]]), 1_000_000),
    ).rejects.toMatchObject({
      code: "ARTIFACT_INVALID",
    });
  });
});
