import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { hostArch } from "@sbx/arch";
import { describe, expect, it } from "vitest";

const main = fileURLToPath(new URL("./main.ts", import.meta.url));

function runQuickstart(env: Record<string, string>) {
  const output = execFileSync(process.execPath, ["--conditions=@sbx/source", main, "--json"], {
    env: { ...process.env, ...env },
    encoding: "utf8",
    // A liveness bound: the first template build compiles the guest agent (for arm64 too, with the
    // cross compiler), and a full test run shares two cores with every package's guests.
    timeout: 170_000,
  });
  return JSON.parse(output.trim().split("\n").at(-1)!);
}

describe.skipIf(!existsSync("/bin/busybox"))("quickstart", { timeout: 180_000 }, () => {
  it("resolves this host's busybox and refuses it for the other arch", () => {
    const result = runQuickstart({ TARGET_ARCH: "" });
    const host = hostArch();
    expect(result.host).toBe(host);
    expect(result.target).toBe(host);
    expect(result.artifacts.host).toMatchObject({ layout: "legacy", checksumVerified: true });
    expect(result.artifacts.other).toBe("ARTIFACT_ARCH_MISMATCH");
  });

  it("follows TARGET_ARCH=aarch64 into the arm64 rules", () => {
    const result = runQuickstart({ TARGET_ARCH: "aarch64" });
    expect(result.target).toBe("arm64");
    expect(result.traits.smtSupported).toBe(false);
    expect(result.uffdRestoreArgs).toContain("SECCOMP_CHOICE_REQUIRED");
  });

  it("restores memory through the page-fault server, builds a template, and runs sandboxes when a Firecracker is there", () => {
    const result = runQuickstart({ TARGET_ARCH: "" });
    expect(result.restore).toMatchObject({ mismatches: 0 });
    expect(result.restore.faults).toBeGreaterThan(1000);
    expect(result.sandboxes.error).toBeUndefined();
    if (process.env.FIRECRACKER_BIN) {
      expect(result.sandboxes.templateMs).toBeGreaterThan(0);
      expect(Object.keys(result.sandboxes.createSteps)).toEqual([
        "compatibility",
        "state-record",
        "network",
        "disk",
        "firecracker",
        "page-fault-server",
        "snapshot-load",
        "wait-alive",
      ]);
      expect(result.sandboxes.resumeMs).toBeGreaterThan(0);
    } else {
      // Everything up to the boot still ran: the rootfs from the locally generated OCI image.
      expect(result.sandboxes.rootfsMs).toBeGreaterThan(0);
      expect(result.sandboxes.skipped).toMatch(/FIRECRACKER_BIN/);
    }
  });
});
