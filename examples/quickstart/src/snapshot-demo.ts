// The snapshot half of the main job: memory restored through the page-fault server, always (with the
// test peer standing in for Firecracker); a template from a local OCI image, always up to the boot;
// and, with a Firecracker, the template snapshot and sandboxes from it.
import { accessSync, constants, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostArch } from "@sbx/arch";
import { buildTestGuest, parseTestGuestLine, TEST_GUEST_READY_MARKER } from "@sbx/fc-client/testing";
import {
  artifactResolverWith,
  configFromEnv,
  createConfig,
  Orchestrator,
  parseTemplateRequest,
  resolveFirecrackerBinary,
  resolveTemplateInputs,
  setupCommandFor,
} from "@sbx/orchestrator";
import { buildExt4Image } from "@sbx/rootfs";
import { writeTemplateInputs } from "@sbx/rootfs/testing";
import { PageFaultServer, prewarmPageFaultWorkers } from "@sbx/uffd";
import { buildTestPeer, runTestPeer, writeTestMemoryFile } from "@sbx/uffd/testing";

const MiB = 1024 * 1024;

export async function restoreWithTestPeer(log: (line: string) => void): Promise<Record<string, unknown>> {
  const dir = mkdtempSync(join(tmpdir(), "sbx-quickstart-restore-"));
  try {
    const memoryFile = join(dir, "mem");
    writeTestMemoryFile(memoryFile, 64 * MiB);
    const peer = await buildTestPeer();
    await using server = new PageFaultServer({ socketPath: join(dir, "uffd.sock"), memoryFile });
    await server.listen();
    const started = performance.now();
    const result = await runTestPeer({
      binary: peer,
      socketPath: server.socketPath,
      memoryFile,
      size: 64 * MiB,
      mode: "random",
      threads: 2,
    });
    const ms = performance.now() - started;
    const metrics = server.metrics();
    log(
      `restore          64 MiB through the page-fault server (${server.codePath}): ${metrics.faults} faults in ${ms.toFixed(0)} ms, ${result.mismatches} wrong pages (test peer standing in for Firecracker)`,
    );
    return {
      codePath: server.codePath,
      faults: metrics.faults,
      mismatches: result.mismatches,
      ms: Math.round(ms),
    };
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    log(`restore          skipped: ${reason}`);
    return { skipped: reason };
  } finally {
    prewarmPageFaultWorkers(0);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The `sbx setup` command (run from a clone) that fetches a Firecracker where sbx looks for one. */
const SBX_FROM_SOURCE = "node --conditions=@sbx/source packages/orchestrator/src/cli/main.ts setup";

async function firecrackerSkipReason(): Promise<string | undefined> {
  if (!process.env.FIRECRACKER_BIN) {
    // The demo's kernel is the tiny test guest, so only Firecracker can be missing.
    const config = configFromEnv(process.env);
    const command = await setupCommandFor(config, { kernel: false, command: SBX_FROM_SOURCE });
    if (command) return `FIRECRACKER_BIN is not set; fetch Firecracker with: ${command}`;
    const installed = await resolveFirecrackerBinary(config);
    return `FIRECRACKER_BIN is not set; run again with FIRECRACKER_BIN=${installed.path} (installed by sbx setup)`;
  }
  if (process.arch !== "x64") return "the tiny test guest is x86_64 only";
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
  } catch {
    return "/dev/kvm is not usable";
  }
  return undefined;
}

/** An OCI image layout generated here (no registry needed) and the host's static busybox. */
function localInputs(dir: string) {
  return writeTemplateInputs({
    dir,
    arch: hostArch(),
    entries: [
      { path: "app/", type: "directory", mode: 0o755 },
      { path: "app/hello", content: "#!/bin/sh\necho hello from the sandbox\n", mode: 0o755 },
    ],
    cmd: ["/app/hello"],
  });
}

/**
 * The template half. Always: the rootfs from an OCI image built here, with the boot parameters a
 * template would record. With a Firecracker: the whole template build, sandboxes from it in their
 * own network namespaces, a pause to a Diff snapshot and a resume.
 */
export async function templateAndSandboxes(log: (line: string) => void): Promise<Record<string, unknown>> {
  const dir = mkdtempSync(join(tmpdir(), "sbx-quickstart-template-"));
  const result: Record<string, unknown> = {};
  try {
    const { busyboxDir, layoutDir } = await localInputs(dir);
    const skip = await firecrackerSkipReason();
    const firecrackerBin = skip ? undefined : (process.env.FIRECRACKER_BIN as string);
    // Every VM runs under the jailer when there is one; without, the demo says it opts out (as an
    // operator must, with SBX_UNJAILED=1) instead of failing.
    const jailerBin = process.env.JAILER_BIN || undefined;
    const config = createConfig({
      stateDir: join(dir, "state"),
      busyboxDir,
      ...(firecrackerBin ? { firecrackerBin } : {}),
      ...(jailerBin ? { jailerBin } : { unjailed: true }),
    });
    const request = { name: "hello", ociLayout: layoutDir, memoryMib: 128, vcpuCount: 1 };
    if (!firecrackerBin) {
      const t = performance.now();
      const inputs = await resolveTemplateInputs(config, parseTemplateRequest(request), join(dir, "work"), {
        resolver: artifactResolverWith({ kernel: "/bin/true", firecracker: "/bin/true" }),
      });
      const rootfs = join(dir, "rootfs.ext4");
      await buildExt4Image({ sourceDir: inputs.rootDir, output: rootfs, size: "auto", label: "rootfs" });
      const ms = performance.now() - t;
      log(
        `rootfs           ext4 from a local OCI image + busybox + init in ${ms.toFixed(0)} ms: ${(statSync(rootfs).size / 1048576).toFixed(1)} MiB, image ${inputs.boot.ociManifestDigest.slice(0, 19)}…`,
      );
      log(`kernel cmdline   ${inputs.boot.kernelCommandLine}`);
      log(`sandboxes        skipped: ${skip}`);
      return { rootfsMs: Math.round(ms), skipped: skip };
    }
    const guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
    const network = process.getuid?.() === 0;
    result.jailed = jailerBin !== undefined;
    log(
      jailerBin
        ? `jail             every VM under ${jailerBin}: its own chroot, uid/gid, cgroup limits and pid namespace`
        : "jail             none: JAILER_BIN is not set, so VMs run unjailed as root (the SBX_UNJAILED=1 opt-out)",
    );
    await using orchestrator = await Orchestrator.open(config);
    let t = performance.now();
    const built = await orchestrator.buildTemplate({
      request: { ...request, network },
      // This machine's KVM cannot boot a stock kernel: the tiny test guest stands in for it.
      resolver: artifactResolverWith({ kernel: guest, firecracker: firecrackerBin }),
      readyMarker: TEST_GUEST_READY_MARKER,
    });
    result.templateMs = Math.round(performance.now() - t);
    log(
      `template         OCI image → rootfs → boot → Full snapshot → build ${built.id}: ${result.templateMs} ms (${built.timings.map((s) => `${s.step} ${s.durationMs.toFixed(0)}`).join(", ")})`,
    );
    const alive = /^SBX-GUEST iter=\d+ sum=/;
    // A liveness bound, not a target: creates return at the first guest line. On a busy host (a test
    // run where other packages' guests spin the same two cores) that line took longer than 10 s.
    const aliveTimeoutMs = 60_000;
    prewarmPageFaultWorkers(4); // page-fault workers loaded ahead of time, as a service would keep them
    await new Promise((resolve) => setTimeout(resolve, 300));
    t = performance.now();
    const create = () => orchestrator.createSandbox({ template: "hello", alive, aliveTimeoutMs });
    const [first] = await Promise.all([create(), create(), create()]);
    result.createMs = Math.round(performance.now() - t);
    result.createSteps = Object.fromEntries(
      first.timings.map((step) => [step.step, Math.round(step.durationMs)]),
    );
    log(
      `sandboxes        3 created at once, each with its own ${network ? "network namespace and " : ""}disk copy, memory through its page-fault server: ${result.createMs} ms`,
    );
    log(
      `                 one create, by step (ms): ${Object.entries(
        result.createSteps as Record<string, number>,
      )
        .map(([step, ms]) => `${step} ${ms}`)
        .join(", ")}`,
    );
    t = performance.now();
    const paused = await first.pause();
    result.pauseMs = Math.round(performance.now() - t);
    t = performance.now();
    const resumed = await orchestrator.createSandbox({ from: paused, alive, aliveTimeoutMs });
    result.resumeMs = Math.round(performance.now() - t);
    const iteration = parseTestGuestLine(
      resumed.firecracker.console.lines().find((l) => alive.test(l)) ?? "",
    )?.iteration;
    log(
      `pause/resume     Diff snapshot + disk into build ${paused.build} in ${result.pauseMs} ms; resumed from its memory header in ${result.resumeMs} ms (guest at iteration ${iteration})`,
    );
    return result;
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    log(`template         failed: ${reason}`);
    return { ...result, error: reason };
  } finally {
    prewarmPageFaultWorkers(0);
    rmSync(dir, { recursive: true, force: true });
  }
}
