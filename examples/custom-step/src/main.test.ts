import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const main = fileURLToPath(new URL("./main.ts", import.meta.url));

describe.skipIf(!existsSync("/bin/busybox"))("custom-step example", () => {
  it("runs the edited step list: the inserted step after inputs, the replaced one in its place", () => {
    const output = execFileSync(process.execPath, ["--conditions=@sbx/source", main, "--json"], {
      encoding: "utf8",
      timeout: 120_000,
    });
    const result = JSON.parse(output.trim().split("\n").at(-1)!);
    expect(result.steps.slice(0, 4)).toEqual(["staging", "inputs", "image-policy", "rootfs"]);
    expect(result.steps).toContain("cpu-template");
    expect(result.steps.slice(-2)).toEqual(["publish", "pointer"]);
    expect(result.manifest.boot.cpuTemplate).toEqual({ kind: "none" });
    expect(result.realSnapshot).toBe(Boolean(process.env.FIRECRACKER_BIN));
  });
});
