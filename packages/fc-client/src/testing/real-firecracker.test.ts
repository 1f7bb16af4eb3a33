import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { realFirecracker } from "./real-firecracker.ts";

describe("realFirecracker", () => {
  it("names every unmet condition, not only the first", () => {
    const result = realFirecracker({
      env: {},
      testGuest: true,
      files: { SBX_TEST_KERNEL: undefined, SBX_TEST_ROOTFS: "/nonexistent/rootfs.ext4" },
    });
    expect(result.binary).toBeUndefined();
    expect(result.unmet).toEqual(
      expect.arrayContaining([
        "FIRECRACKER_BIN not set",
        "SBX_TEST_KERNEL not set",
        "SBX_TEST_ROOTFS=/nonexistent/rootfs.ext4 is not readable",
      ]),
    );
    expect(result.skipReason).toBe(result.unmet.join("; "));
  });

  it("refuses a FIRECRACKER_BIN that is not executable", () => {
    const dir = mkdtempSync(join(tmpdir(), "sbx-real-fc-"));
    try {
      const notExecutable = join(dir, "firecracker");
      writeFileSync(notExecutable, "", { mode: 0o644 });
      const result = realFirecracker({ env: { FIRECRACKER_BIN: notExecutable } });
      expect(result.unmet).toContain(`FIRECRACKER_BIN=${notExecutable} is not executable`);
      expect(result.binary).toBeUndefined();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("hands out the binary only when nothing is missing", () => {
    const result = realFirecracker({ env: { FIRECRACKER_BIN: "/bin/sh" }, files: { A_FILE: "/bin/sh" } });
    expect(result.binary === undefined).toBe(result.unmet.length > 0);
    expect(
      result.unmet.filter((reason) => reason.includes("FIRECRACKER_BIN") || reason.includes("A_FILE")),
    ).toEqual([]);
  });
  it("reports the jailer from JAILER_BIN only when it is executable and this is root, else why not", () => {
    expect(realFirecracker({ env: {} })).toMatchObject({
      jailer: undefined,
      jailerSkipReason: "JAILER_BIN not set",
    });
    expect(realFirecracker({ env: { JAILER_BIN: "/nonexistent/jailer" } }).jailerSkipReason).toBe(
      "JAILER_BIN=/nonexistent/jailer is not executable",
    );
    const executable = realFirecracker({ env: { JAILER_BIN: "/bin/true" } });
    if (process.getuid?.() === 0)
      expect(executable).toMatchObject({ jailer: "/bin/true", jailerSkipReason: undefined });
    else expect(executable).toMatchObject({ jailer: undefined, jailerSkipReason: "the jailer needs root" });
  });
});
