// An arm64 configuration, checked on whatever host runs it: the config an arm64 orchestrator gets from
// its environment, what the arch changes (SMT, seccomp for UFFD restores, write-protect, kernel format,
// OCI platform, command line, timeouts), and the guards that keep arm64 and amd64 artifacts apart.
// docs/arm64.md explains each point.
//
//   node --conditions=@sbx/source examples/arm64/src/main.ts [--json]
import { copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  ArchError,
  archTraits,
  hostArch,
  parseKernelRelease,
  resolveArtifact,
  sha256File,
  uffdWriteProtectSupported,
} from "@sbx/arch";
import {
  assertCanRunFirecracker,
  configFromEnv,
  OrchestratorError,
  resolveBootParameters,
} from "@sbx/orchestrator";
import { buildKernelCmdline } from "@sbx/rootfs";

const json = process.argv.includes("--json");
const log = (line: string) => {
  if (!json) console.log(line);
};
const codeOf = (error: unknown) =>
  error instanceof ArchError || error instanceof OrchestratorError ? error.code : String(error);

// What a Graviton host's orchestrator would be started with (the Go orchestrator's variable names).
const config = configFromEnv({
  TARGET_ARCH: "aarch64",
  FC_CPU_TEMPLATE: "V1N1",
  SBX_SECCOMP_FILTER: "/etc/sbx/arm64-uffd.bpf",
});
const traits = archTraits(config.targetArch);
log(`target           ${config.targetArch} (from TARGET_ARCH=aarch64); this host is ${hostArch()}`);
log(`CPU template     ${JSON.stringify(config.cpuTemplate)} (V1N1 is the Neoverse V1 → N1 static template)`);
log(
  `timeouts         ready ${config.readyTimeoutMs} ms, provisioning ${config.provisioningTimeoutMs} ms (arm64 kernels boot slower)`,
);
log(`kernel           ${config.kernelName} (${traits.kernelImageFormat}), not vmlinux`);
log(
  `OCI platform     ${traits.ociPlatform.os}/${traits.ociPlatform.architecture}/${traits.ociPlatform.variant}`,
);
log(
  `SMT              ${traits.smtSupported ? "allowed" : "not supported: machine-config smt must be false"}`,
);

let seccomp: string;
try {
  traits.firecrackerArgs({ uffdRestore: true });
  seccomp = "no choice needed";
} catch (error) {
  seccomp = codeOf(error);
}
const withFilter = traits.firecrackerArgs({ uffdRestore: true, seccompFilter: "/etc/sbx/arm64-uffd.bpf" });
log(
  `seccomp          UFFD restore without a decision: ${seccomp}; with a filter: firecracker ${withFilter.join(" ")}`,
);

const writeProtect = ["6.1.0", "6.8.0", "6.10.0"].map((release) => {
  const support = uffdWriteProtectSupported({
    arch: "arm64",
    release: parseKernelRelease(release),
    backing: "anonymous",
  });
  return { release, supported: support.supported };
});
log(
  `write-protect    ${writeProtect.map((w) => `${w.release}: ${w.supported ? "yes" : "no"}`).join(", ")} (else Diff snapshots use Firecracker's dirty tracking)`,
);

const cmdline = buildKernelCmdline({
  arch: "arm64",
  network: { clientIp: config.guestAddress, gatewayIp: "192.168.241.1", prefixLength: 29 },
});
log(`cmdline          ${cmdline} (no pci=off on arm64)`);

// Guards: artifacts are looked up per arch and checked by their ELF header, never trusted by path.
const root = await mkdtemp(join(tmpdir(), "sbx-arm64-example-"));
let artifactGuard: string;
let smtGuard: string;
let bootGuard: string;
try {
  // This host's busybox put where the arm64 one belongs: refused, because it is not an arm64 binary.
  await mkdir(join(root, config.busyboxVersion, "arm64"), { recursive: true });
  const misplaced = join(root, config.busyboxVersion, "arm64", "busybox");
  await copyFile("/bin/busybox", misplaced);
  await writeFile(`${misplaced}.sha256`, `${await sha256File(misplaced)}  busybox\n`);
  artifactGuard = await resolveArtifact({
    root,
    version: config.busyboxVersion,
    name: "busybox",
    arch: "arm64",
  }).then(() => (hostArch() === "arm64" ? "accepted (this host is arm64)" : "accepted (unexpected)"), codeOf);
  log(`artifact guard   ${hostArch()} busybox under arm64/: ${artifactGuard}`);

  smtGuard = await resolveBootParameters(
    config,
    { ociManifestDigest: `sha256:${"0".repeat(64)}`, initScript: "", smt: true },
    { resolve: async () => Promise.reject(new Error("not reached")) },
  ).then(() => "accepted (unexpected)", codeOf);
  log(`SMT guard        smt: true for arm64: ${smtGuard}`);

  try {
    assertCanRunFirecracker(config);
    bootGuard = "this host can boot arm64 VMs";
  } catch (error) {
    bootGuard = codeOf(error);
  }
  log(
    `boot guard       booting an arm64 template here: ${bootGuard} (rootfs builds for arm64 work on any host)`,
  );
} finally {
  await rm(root, { recursive: true, force: true });
}

if (json) {
  console.log(
    JSON.stringify({
      targetArch: config.targetArch,
      cpuTemplate: config.cpuTemplate,
      readyTimeoutMs: config.readyTimeoutMs,
      kernelName: config.kernelName,
      smtSupported: traits.smtSupported,
      seccomp,
      withFilter,
      writeProtect,
      cmdline,
      artifactGuard,
      smtGuard,
      bootGuard,
    }),
  );
}
