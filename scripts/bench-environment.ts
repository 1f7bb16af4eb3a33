import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { cpus, release } from "node:os";

/** The header every benchmark's JSON starts with, so results from different machines are comparable. */
export function benchEnvironment(extra: Record<string, unknown> = {}): Record<string, unknown> {
  let firecracker: string | null = null;
  const binary = process.env.FIRECRACKER_BIN;
  if (binary) {
    try {
      firecracker = execFileSync(binary, ["--version"], { encoding: "utf8" }).split("\n")[0]?.trim() ?? null;
    } catch {
      firecracker = null;
    }
  }
  return {
    date: new Date().toISOString(),
    kernel: release(),
    arch: process.arch,
    cpu: cpus()[0]?.model ?? "unknown",
    cpus: cpus().length,
    node: process.version,
    firecracker,
    kvm: existsSync("/dev/kvm") ? "present" : "absent",
    ...extra,
  };
}
