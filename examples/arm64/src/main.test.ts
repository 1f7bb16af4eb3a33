import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { hostArch } from "@sbx/arch";
import { describe, expect, it } from "vitest";

const main = fileURLToPath(new URL("./main.ts", import.meta.url));

describe.skipIf(!existsSync("/bin/busybox"))("arm64 example", () => {
  it("applies the arm64 rules and guards on this host", () => {
    const output = execFileSync(process.execPath, ["--conditions=@sbx/source", main, "--json"], {
      encoding: "utf8",
      timeout: 60_000,
    });
    const result = JSON.parse(output.trim().split("\n").at(-1)!);
    expect(result).toMatchObject({
      targetArch: "arm64",
      cpuTemplate: { kind: "static", name: "V1N1" },
      kernelName: "Image",
      smtSupported: false,
      seccomp: "SECCOMP_CHOICE_REQUIRED",
      withFilter: ["--seccomp-filter", "/etc/sbx/arm64-uffd.bpf"],
      smtGuard: "INVALID_OPTIONS",
    });
    expect(result.readyTimeoutMs).toBeGreaterThan(10_000);
    expect(result.cmdline).not.toContain("pci=off");
    expect(result.writeProtect).toEqual([
      { release: "6.1.0", supported: false },
      { release: "6.8.0", supported: false },
      { release: "6.10.0", supported: true },
    ]);
    if (hostArch() === "amd64") {
      expect(result.artifactGuard).toBe("ARTIFACT_ARCH_MISMATCH");
      expect(result.bootGuard).toBe("ARCH_MISMATCH");
    }
  });
});
