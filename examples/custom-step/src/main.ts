// A custom orchestrator in one file: the default template build, with a step inserted (an image policy
// that reads the unpacked rootfs before it becomes ext4) and one replaced (the CPU-template step, here
// pinned to "no template" and recorded). With FIRECRACKER_BIN the build boots the tiny test guest and
// snapshots it; without, the three VM steps are swapped for a stand-in, the way tests fake a launcher.
//
//   node --conditions=@sbx/source examples/custom-step/src/main.ts [--json]
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostArch } from "@sbx/arch";
import { hostFingerprint } from "@sbx/cpu-template";
import { buildTestGuest, TEST_GUEST_READY_MARKER } from "@sbx/fc-client/testing";
import {
  artifactResolverWith,
  BUILD_FILES,
  createConfig,
  Orchestrator,
  type Step,
  type StepList,
  type TemplateBuildContext,
} from "@sbx/orchestrator";
import { writeBusyboxFixture, writeOciLayout } from "@sbx/rootfs/testing";

const json = process.argv.includes("--json");
const log = (line: string) => {
  if (!json) console.log(line);
};

/** Inserted after "inputs": refuses images that ship setuid binaries in /app (a site policy). */
const imagePolicy: Step<TemplateBuildContext> = {
  name: "image-policy",
  async run(context) {
    const root = context.inputs?.rootDir;
    if (!root) throw new Error("image-policy needs the inputs step before it");
    if (existsSync(join(root, "app", "forbidden"))) throw new Error("the image has /app/forbidden");
    log(`image-policy     ${root}: allowed`);
  },
};

/** Replaces "cpu-template": this fleet is homogeneous, so no template, but record the host anyway. */
const pinnedCpuTemplate: Step<TemplateBuildContext> = {
  name: "cpu-template",
  async run(context) {
    const host = hostFingerprint();
    context.fingerprint = host;
    log(`cpu-template     replaced: no CPU template, host ${host.vendor}`);
  },
};

/** Stands in for boot + wait-ready + snapshot when no Firecracker is available. */
const fakeSnapshot: Step<TemplateBuildContext> = {
  name: "snapshot",
  async run(context) {
    await writeFile(join(context.stagingDir, BUILD_FILES.vmstate), "not a real vmstate");
    await writeFile(join(context.stagingDir, BUILD_FILES.memory), Buffer.alloc(1 << 20));
  },
};

const dir = await mkdtemp(join(tmpdir(), "sbx-custom-step-"));
try {
  const arch = hostArch();
  await writeBusyboxFixture({ dir: join(dir, "busybox"), arch });
  await writeOciLayout({
    dir: join(dir, "image"),
    images: [
      {
        platform: { os: "linux", architecture: arch },
        layers: [{ entries: [{ path: "app/run", content: "#!/bin/sh\necho hi\n", mode: 0o755 }] }],
      },
    ],
  });
  const firecrackerBin = process.env.FIRECRACKER_BIN;
  const config = createConfig({
    stateDir: join(dir, "state"),
    busyboxDir: join(dir, "busybox"),
    ...(firecrackerBin ? { firecrackerBin } : {}),
    // Jailed with a jailer; without one the example opts out explicitly (SBX_UNJAILED=1 for an operator).
    ...(process.env.JAILER_BIN ? { jailerBin: process.env.JAILER_BIN } : { unjailed: true }),
  });
  const kernel = firecrackerBin
    ? (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path
    : "/bin/true";
  const customize = (steps: StepList<TemplateBuildContext>) => {
    const edited = steps.insertAfter("inputs", imagePolicy).replace("cpu-template", pinnedCpuTemplate);
    return firecrackerBin
      ? edited
      : edited
          .remove("network")
          .remove("provision")
          .remove("boot")
          .remove("wait-ready")
          .replace("snapshot", fakeSnapshot);
  };
  await using orchestrator = await Orchestrator.open(config);
  const built = await orchestrator.buildTemplate({
    request: { name: "custom", ociLayout: join(dir, "image"), memoryMib: 128, vcpuCount: 1, network: false },
    resolver: artifactResolverWith({ kernel, firecracker: firecrackerBin ?? "/bin/true" }),
    readyMarker: TEST_GUEST_READY_MARKER,
    steps: customize,
  });
  const steps = built.timings.map((t) => t.step);
  log(`steps            ${steps.join(" → ")}`);
  log(
    `build.json       ${built.directory}/build.json (build ${built.id}, cpu template: ${built.manifest.boot?.cpuTemplate.kind})`,
  );
  log(
    firecrackerBin
      ? "snapshot         real, from the test guest"
      : "snapshot         stand-in (FIRECRACKER_BIN is not set)",
  );
  if (json)
    console.log(JSON.stringify({ steps, realSnapshot: Boolean(firecrackerBin), manifest: built.manifest }));
} finally {
  await rm(dir, { recursive: true, force: true });
}
