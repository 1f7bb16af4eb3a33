// The quick start's main job. It shows what sbx decides for this host, proves the artifact rules on real
// binaries, restores memory through the page-fault server, and, with a Firecracker, runs sandboxes from
// a snapshot: create, pause to a Diff snapshot, resume from the layers.
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  ArchError,
  archTraits,
  hostArch,
  hostKernelRelease,
  resolveArtifact,
  sha256File,
  targetArchFromEnv,
  uffdWriteProtectSupported,
} from "@sbx/arch";
import { restoreWithTestPeer, templateAndSandboxes } from "./snapshot-demo.ts";

const json = process.argv.includes("--json");
const log = (line: string) => {
  if (!json) console.log(line);
};

const host = hostArch();
const target = targetArchFromEnv(process.env, {
  logger: { warn: (_fields, message) => console.warn(`warning: ${message}`) },
});
const traits = archTraits(target);
const kernel = hostKernelRelease();
const writeProtect = uffdWriteProtectSupported({ arch: host, release: kernel, backing: "anonymous" });

log(`host arch        ${host} (kernel ${kernel.raw})`);
log(`target arch      ${target} (TARGET_ARCH=${process.env.TARGET_ARCH ?? ""})`);
log(
  `OCI platform     ${[traits.ociPlatform.os, traits.ociPlatform.architecture, traits.ociPlatform.variant].filter(Boolean).join("/")}`,
);
log(`SMT allowed      ${traits.smtSupported}`);
log(`kernel format    ${traits.kernelImageFormat}`);
let seccompArgs: string[] | string;
try {
  seccompArgs = traits.firecrackerArgs({ uffdRestore: true });
} catch (error) {
  seccompArgs = error instanceof ArchError ? `needs a choice (${error.code})` : String(error);
}
log(
  `UFFD restore     firecracker ${Array.isArray(seccompArgs) ? seccompArgs.join(" ") || "(no extra args)" : seccompArgs}`,
);
log(`UFFD write-protect ${writeProtect.supported ? "yes" : "no"}: ${writeProtect.reason}`);

// A real artifact root: the host's own busybox in the legacy layout, with a sha256 sidecar.
const root = mkdtempSync(join(tmpdir(), "sbx-quickstart-"));
const artifacts: Record<string, unknown> = {};
try {
  mkdirSync(join(root, "1.36.1"), { recursive: true });
  const busybox = join(root, "1.36.1", "busybox");
  copyFileSync("/bin/busybox", busybox);
  writeFileSync(`${busybox}.sha256`, `${await sha256File(busybox)}  busybox\n`);
  const found = await resolveArtifact({
    root,
    version: "1.36.1",
    name: "busybox",
    arch: host,
    checksum: { kind: "sidecar" },
  });
  artifacts.host = found;
  log(
    `artifact         busybox for ${host}: ${found.layout} layout, sha256 ${found.sha256?.slice(0, 12)}… verified`,
  );
  const other = host === "amd64" ? "arm64" : "amd64";
  try {
    await resolveArtifact({ root, version: "1.36.1", name: "busybox", arch: other });
    artifacts.other = "accepted (unexpected)";
  } catch (error) {
    artifacts.other = error instanceof ArchError ? error.code : String(error);
    log(
      `artifact         busybox for ${other}: refused, ${artifacts.other} (this ${host} binary is never handed to ${other})`,
    );
  }
} catch (error) {
  artifacts.error = error instanceof Error ? error.message : String(error);
  log(`artifact         skipped: ${artifacts.error}`);
} finally {
  rmSync(root, { recursive: true, force: true });
}

const restore = await restoreWithTestPeer(log);
const sandboxes = await templateAndSandboxes(log);

if (json) {
  console.log(
    JSON.stringify({
      restore,
      sandboxes,
      host,
      target,
      kernel: kernel.raw,
      traits: { ...traits, firecrackerArgs: undefined },
      uffdRestoreArgs: seccompArgs,
      writeProtect,
      artifacts,
    }),
  );
}
