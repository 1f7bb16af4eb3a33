import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdir, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { isTempName, tempNameOwner, tempPathFor, writeFileAtomic, writeJsonAtomic } from "./atomic-file.ts";
import { withTempDir } from "./test-fixtures.ts";

const openFds = async () => (await readdir("/proc/self/fd")).length;

describe("writeFileAtomic", () => {
  it("replaces the file and leaves nothing else in the directory", async () => {
    await withTempDir(async (dir) => {
      const path = join(dir, "x.json");
      await writeJsonAtomic(path, { a: 1 });
      await writeJsonAtomic(path, { a: 2 });
      expect(await readFile(path, "utf8")).toBe('{\n  "a": 2\n}\n');
      await writeFileAtomic(path, Buffer.from("bytes"));
      await writeFileAtomic(path, async (handle) => {
        await handle.write("through ");
        await handle.write("a handle");
      });
      expect(await readFile(path, "utf8")).toBe("through a handle");
      expect(await readdir(dir)).toEqual(["x.json"]);
    });
  });

  it("makes its temp file in tempDirectory when given, and leaves nothing there", async () => {
    await withTempDir(async (dir) => {
      await mkdir(join(dir, "tmp"));
      await mkdir(join(dir, "entries"));
      const path = join(dir, "entries", "one");
      const seen: string[] = [];
      await writeFileAtomic(
        path,
        async (handle) => {
          seen.push(...(await readdir(join(dir, "tmp"))), ...(await readdir(join(dir, "entries"))));
          await handle.write("content");
        },
        { tempDirectory: join(dir, "tmp") },
      );
      // While it was written, the temp file was in tmp/ and nothing was in entries/.
      expect(seen).toHaveLength(1);
      expect(isTempName(seen[0] as string)).toBe(true);
      expect(await readdir(join(dir, "tmp"))).toEqual([]);
      expect(await readFile(path, "utf8")).toBe("content");
    });
  });

  it("sets the mode it is given despite the umask, and 0600 by default", async () => {
    await withTempDir(async (dir) => {
      await writeFileAtomic(join(dir, "bin"), "#!/bin/sh\n", { mode: 0o755 });
      await writeFileAtomic(join(dir, "state"), "{}");
      expect((await stat(join(dir, "bin"))).mode & 0o777).toBe(0o755);
      expect((await stat(join(dir, "state"))).mode & 0o777).toBe(0o600);
    });
  });

  it("keeps the old content and removes its temp file when filling fails, and closes its fd", async () => {
    await withTempDir(async (dir) => {
      const path = join(dir, "x");
      await writeFile(path, "old");
      const fdsBefore = await openFds();
      await expect(
        writeFileAtomic(path, async (handle) => {
          await handle.write("half of the new");
          throw new Error("source went away");
        }),
      ).rejects.toThrow("source went away");
      expect(await readFile(path, "utf8")).toBe("old");
      expect(await readdir(dir)).toEqual(["x"]);
      expect(await openFds()).toBe(fdsBefore);
    });
  });

  it("removes its temp file when the rename fails and reports the error", async () => {
    await withTempDir(async (dir) => {
      await expect(writeJsonAtomic(join(dir, "missing-dir", "x.json"), {})).rejects.toMatchObject({
        code: "ENOENT",
      });
      // A non-empty directory where the file should go: the rename fails after the temp file exists.
      await mkdir(join(dir, "taken", "inside"), { recursive: true });
      await expect(writeJsonAtomic(join(dir, "taken"), {})).rejects.toMatchObject({
        code: expect.stringMatching(/^(EISDIR|ENOTEMPTY|EEXIST)$/),
      });
      expect(await readdir(dir)).toEqual(["taken"]);
    });
  });

  it("a reader racing many rewrites sees the old or the new content, never a mix", async () => {
    await withTempDir(async (dir) => {
      const path = join(dir, "x");
      // Big enough that a non-atomic write would be observed half done.
      const versions = ["a", "b"].map((letter) => letter.repeat(4 * 1024 * 1024));
      await writeFileAtomic(path, versions[0] as string);
      let writing = true;
      const writer = (async () => {
        for (let round = 0; round < 20; round++) await writeFileAtomic(path, versions[round % 2] as string);
      })().finally(() => {
        writing = false;
      });
      const seen = new Set<string>();
      let reads = 0;
      while (writing || reads === 0) {
        const content = await readFile(path, "latin1");
        reads++;
        expect(content.length).toBe(4 * 1024 * 1024);
        seen.add(`${content[0]}${content.at(-1)}`);
        expect(content === versions[0] || content === versions[1]).toBe(true);
      }
      await writer;
      expect([...seen].every((ends) => ends === "aa" || ends === "bb")).toBe(true);
      expect(await readdir(dir)).toEqual(["x"]);
    });
  });

  it("a writer killed mid-write leaves the old content and only a temp file the helpers recognise", async () => {
    await withTempDir(async (dir) => {
      const path = join(dir, "state.json");
      await writeFile(path, "old");
      const module = new URL("./atomic-file.ts", import.meta.url).pathname;
      const child = spawn(
        process.execPath,
        [
          "--input-type=module",
          "-e",
          `import { writeFileAtomic } from ${JSON.stringify(module)};
           await writeFileAtomic(process.argv[1], async (handle) => {
             await handle.write("half of the new");
             process.stdout.write("written\\n");
             await new Promise(() => setInterval(() => {}, 1000));
           });`,
          path,
        ],
        { stdio: ["ignore", "pipe", "inherit"] },
      );
      await once(child.stdout, "data");
      child.kill("SIGKILL");
      await once(child, "exit");
      expect(await readFile(path, "utf8")).toBe("old");
      const leftovers = (await readdir(dir)).filter((name) => name !== "state.json");
      expect(leftovers).toHaveLength(1);
      const [leftover] = leftovers as [string];
      expect(isTempName(leftover)).toBe(true);
      expect(leftover.endsWith(".json")).toBe(false);
      expect(tempNameOwner(leftover)).toBe(child.pid);
    });
  });
});

describe("temp names", () => {
  it("recognises its own and the older forms and nothing else", () => {
    const mine = tempPathFor("/state/templates/py.json").split("/").at(-1) as string;
    expect(mine.startsWith(".py.json.tmp-")).toBe(true);
    expect(tempNameOwner(mine)).toBe(process.pid);
    expect(tempNameOwner(".tmp-4194305-abc-digest")).toBe(4194305);
    // A visible name is never a temp name, whatever it contains: a store key may.
    for (const name of [
      "py.json",
      "tmp-1-x",
      ".tmp-x-1",
      "memory.chunks",
      "a.tmp-1-ab",
      "sandbox.json.tmp-42-dead",
    ]) {
      expect(isTempName(name)).toBe(false);
      expect(tempNameOwner(name)).toBeUndefined();
    }
  });
});
