import { execFileSync, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { detectBinaryArch, hostArch, parseSha256Sidecar } from "@sbx/arch";
import { describe, expect, it } from "vitest";
import { AGENT_TOOLCHAINS, AGENT_VERSION, ensureAgentBinary } from "./agent-binary.ts";
import { PROTOCOL_VERSION } from "./protocol.ts";

const arm64Compiler = spawnSync(AGENT_TOOLCHAINS.arm64.compiler, ["--version"]).status === 0;

describe("the agent binary", () => {
  it("is built static for the host's arch, checksummed, and reports the version this client expects", async () => {
    const built = await ensureAgentBinary(hostArch());
    expect((await detectBinaryArch(built.path)).arch).toBe(hostArch());
    expect(execFileSync("file", ["-b", built.path], { encoding: "utf8" })).toMatch(/statically linked/);
    expect(parseSha256Sidecar(readFileSync(`${built.path}.sha256`, "utf8"), "sbx-agent")).toBe(built.sha256);
    expect(execFileSync(built.path, ["--version"], { encoding: "utf8" }).trim()).toBe(
      `sbx-agent ${AGENT_VERSION} protocol ${PROTOCOL_VERSION}`,
    );
    // Unchanged sources: the same file, not a rebuild.
    expect(await ensureAgentBinary(hostArch())).toEqual(built);
  });

  it("exits non-zero when no listener can be opened, and on unknown flags", async () => {
    const built = await ensureAgentBinary(hostArch());
    const none = spawnSync(built.path, ["--unix", "/nonexistent-dir/agent.sock"], { encoding: "utf8" });
    expect(none.status).toBe(1);
    expect(none.stderr).toContain("no listener could be opened");
    expect(spawnSync(built.path, ["--bogus"]).status).toBe(2);
  });

  it.skipIf(!arm64Compiler)(
    "cross-builds for arm64 with a baseline CPU (needs gcc-aarch64-linux-gnu)",
    async () => {
      const built = await ensureAgentBinary("arm64");
      expect((await detectBinaryArch(built.path)).arch).toBe("arm64");
      expect(AGENT_TOOLCHAINS.arm64.flags).toContain("-march=armv8-a");
      expect(AGENT_TOOLCHAINS.amd64.flags).toContain("-march=x86-64");
    },
  );
});
