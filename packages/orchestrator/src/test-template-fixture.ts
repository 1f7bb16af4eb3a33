// What template tests share: an OCI layout, a busybox directory, a config in a fresh state directory,
// and an artifact resolver whose "kernel" may be the tiny test guest.
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostArch } from "@sbx/arch";
import { writeTemplateInputs } from "@sbx/rootfs/testing";
import { type ArtifactResolver, artifactResolverWith } from "./boot-parameters.ts";
import { createConfig, type OrchestratorConfig } from "./config.ts";
import { testLaunchOptions } from "./test-launch-mode.ts";

export interface TemplateFixture {
  dir: string;
  layoutDir: string;
  config: OrchestratorConfig;
}

export async function templateFixture(options: { firecrackerBin?: string } = {}): Promise<TemplateFixture> {
  const dir = await mkdtemp(join(tmpdir(), "sbx-template-test-"));
  const { busyboxDir, layoutDir } = await writeTemplateInputs({
    dir,
    arch: hostArch(),
    layoutName: "layout",
    entries: [
      { path: "etc/", type: "directory", mode: 0o755 },
      { path: "etc/motd", content: "built by sbx tests\n", mode: 0o644 },
      { path: "app/", type: "directory", mode: 0o755 },
      { path: "app/run", content: "#!/bin/sh\necho app\n", mode: 0o755 },
    ],
    cmd: ["/app/run"],
  });
  const config = createConfig({
    stateDir: join(dir, "state"),
    busyboxDir,
    maxConcurrentCreates: 16,
    // Jailed with JAILER_BIN, else explicitly unjailed.
    ...testLaunchOptions(),
    ...(options.firecrackerBin ? { firecrackerBin: options.firecrackerBin } : {}),
  });
  return { dir, layoutDir, config };
}

/** The configured busybox, with `kernel` standing in for the kernel (default Firecracker: /bin/true). */
export function testResolver(kernel: string, firecracker?: string): ArtifactResolver {
  return artifactResolverWith({ kernel, firecracker: firecracker ?? "/bin/true" });
}
