// The snapshot half of the main job: memory restored through the page-fault server, always (with the
// test peer standing in for Firecracker), and real sandboxes when a Firecracker is available.
import { accessSync, constants, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { configureAndStart, launchFirecracker } from "@sbx/fc-client";
import { buildTestGuest, parseTestGuestLine } from "@sbx/fc-client/testing";
import { createSandbox } from "@sbx/orchestrator";
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

function firecrackerSkipReason(): string | undefined {
  if (!process.env.FIRECRACKER_BIN)
    return "FIRECRACKER_BIN is not set (DEVELOPERS.md says where to get a Firecracker)";
  if (process.arch !== "x64") return "the tiny test guest is x86_64 only";
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
  } catch {
    return "/dev/kvm is not usable";
  }
  return undefined;
}

export async function sandboxesWithFirecracker(
  log: (line: string) => void,
): Promise<Record<string, unknown>> {
  const skip = firecrackerSkipReason();
  if (skip) {
    log(`sandboxes        skipped: ${skip}`);
    return { skipped: skip };
  }
  const binary = process.env.FIRECRACKER_BIN as string;
  const dir = mkdtempSync(join(tmpdir(), "sbx-quickstart-fc-"));
  try {
    const guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
    const template = { vmstate: join(dir, "vmstate"), layers: [join(dir, "mem")] };
    let t = performance.now();
    {
      await using fc = await launchFirecracker({
        binary,
        id: "quickstart-template",
        logPath: join(dir, "template.log"),
      });
      await configureAndStart(fc.client, {
        "boot-source": { kernel_image_path: guest, boot_args: "console=ttyS0" },
        "machine-config": { vcpu_count: 1, mem_size_mib: 128, track_dirty_pages: true },
      });
      await fc.waitForConsole(/^SBX-GUEST iter=\d+ /, { timeoutMs: 30_000 });
      await fc.client.patchVm({ state: "Paused" });
      await fc.client.createSnapshot({
        snapshot_type: "Full",
        snapshot_path: template.vmstate,
        mem_file_path: template.layers[0]!,
      });
    }
    const templateMs = performance.now() - t;
    log(`template         booted the test guest, paused, Full snapshot: ${templateMs.toFixed(0)} ms`);
    const alive = /^SBX-GUEST iter=\d+ sum=/;
    prewarmPageFaultWorkers(4); // page-fault workers loaded ahead of time, as a service would keep them
    await new Promise((resolve) => setTimeout(resolve, 300));
    t = performance.now();
    const sandboxes = await Promise.all(
      [0, 1, 2].map((i) =>
        createSandbox({
          firecrackerBin: binary,
          snapshot: template,
          directory: join(dir, `sandbox-${i}`),
          alive,
        }),
      ),
    );
    const createMs = performance.now() - t;
    log(
      `sandboxes        3 created at once through the page-fault server, each running: ${createMs.toFixed(0)} ms`,
    );
    try {
      t = performance.now();
      const layers = await sandboxes[0]!.pause();
      const pauseMs = performance.now() - t;
      t = performance.now();
      await using resumed = await createSandbox({
        firecrackerBin: binary,
        snapshot: layers,
        directory: join(dir, "resumed"),
        alive,
      });
      const resumeMs = performance.now() - t;
      const iteration = parseTestGuestLine(
        resumed.firecracker.console.lines().find((l) => alive.test(l)) ?? "",
      )?.iteration;
      log(
        `pause/resume     Diff snapshot ${pauseMs.toFixed(0)} ms; resumed from template + diff in ${resumeMs.toFixed(0)} ms (guest at iteration ${iteration})`,
      );
      return {
        templateMs: Math.round(templateMs),
        createMs: Math.round(createMs),
        pauseMs: Math.round(pauseMs),
        resumeMs: Math.round(resumeMs),
      };
    } finally {
      await Promise.all(sandboxes.map((s) => s.kill()));
    }
  } finally {
    prewarmPageFaultWorkers(0);
    rmSync(dir, { recursive: true, force: true });
  }
}
