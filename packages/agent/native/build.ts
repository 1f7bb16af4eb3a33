// `pnpm --filter @sbx/agent build:native`: builds the guest agent for every arch whose compiler is
// installed (gcc for amd64, gcc-aarch64-linux-gnu for arm64); a missing compiler is reported, not fatal.
import { execFileSync } from "node:child_process";
import { AGENT_TOOLCHAINS, buildAgent } from "../src/agent-binary.ts";

for (const arch of ["amd64", "arm64"] as const) {
  const { compiler } = AGENT_TOOLCHAINS[arch];
  try {
    execFileSync(compiler, ["--version"], { stdio: "ignore" });
  } catch {
    console.log(`[agent] ${arch} agent not built: ${compiler} is not installed`);
    continue;
  }
  const built = await buildAgent(arch);
  console.log(`[agent] ${arch} agent: ${built.path} (sha256 ${built.sha256})`);
}
