import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readJailerAndFirecrackerVersions } from "./jailer-version.ts";

describe("readJailerAndFirecrackerVersions", () => {
  let dir: string;
  const script = async (name: string, body: string): Promise<string> => {
    const path = join(dir, name);
    await writeFile(path, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    return path;
  };
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sbx-jailer-version-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("returns both versions, which may differ (an older jailer runs a newer Firecracker)", async () => {
    const jailer = await script("jailer", 'echo "Jailer v1.7.0"; echo');
    // Firecracker prints a log line after its version.
    const firecracker = await script(
      "firecracker",
      'echo "Firecracker v1.14.2"; echo; echo "2026-01-01T00:00:00 [anonymous-instance:main] Firecracker exiting successfully. exit_code=0"',
    );
    expect(await readJailerAndFirecrackerVersions({ jailer, firecracker })).toEqual({
      jailer: "1.7.0",
      firecracker: "1.14.2",
    });
  });

  it("says which binary failed and why: missing, or not printing its name and version", async () => {
    const firecracker = await script("fc-ok", 'echo "Firecracker v1.14.2"');
    await expect(
      readJailerAndFirecrackerVersions({ jailer: join(dir, "missing"), firecracker }),
    ).rejects.toMatchObject({
      code: "BINARY_NOT_FOUND",
      message: expect.stringContaining("missing --version"),
    });
    // Swapped binaries are caught: a Firecracker passed as the jailer does not print "Jailer v".
    await expect(readJailerAndFirecrackerVersions({ jailer: firecracker, firecracker })).rejects.toThrow(
      /did not print "Jailer vX.Y.Z"/,
    );
  });
});
