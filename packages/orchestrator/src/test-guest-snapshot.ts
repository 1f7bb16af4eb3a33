// What the real-Firecracker tests share: a Full snapshot of the tiny test guest taken once it printed a
// given iteration, and the proof that a restored guest goes on with the right checksum.
import { mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { configureAndStart, type FirecrackerProcess, launchFirecracker } from "@sbx/fc-client";
import { buildTestGuest, expectedGuestChecksums, parseTestGuestLine } from "@sbx/fc-client/testing";
import { expect } from "vitest";

export const GUEST_LINE = /^SBX-GUEST iter=\d+ sum=[0-9a-f]{8}$/;

/** `{dir}/vmstate` and `{dir}/mem`: the test guest (128 MiB, one vCPU) once it printed iteration `atLeast`. */
export async function snapshotTestGuest(
  firecrackerBin: string,
  dir: string,
  atLeast = 2,
): Promise<{ vmstate: string; memory: string }> {
  const guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
  await mkdir(dir, { recursive: true });
  await using fc = await launchFirecracker({
    binary: firecrackerBin,
    id: "sbx-test-snapshot",
    logPath: join(dir, "fc.log"),
  });
  await configureAndStart(fc.client, {
    "boot-source": { kernel_image_path: guest, boot_args: "console=ttyS0" },
    "machine-config": { vcpu_count: 1, mem_size_mib: 128, track_dirty_pages: true },
  });
  await fc.waitForConsole(new RegExp(`^SBX-GUEST iter=(${atLeast}|\\d{${String(atLeast).length + 1},}) `), {
    timeoutMs: 30_000,
  });
  await fc.client.patchVm({ state: "Paused" });
  const snapshot = { vmstate: join(dir, "vmstate"), memory: join(dir, "mem") };
  await fc.client.createSnapshot({
    snapshot_type: "Full",
    snapshot_path: snapshot.vmstate,
    mem_file_path: snapshot.memory,
  });
  return snapshot;
}

/** The newest iteration the guest printed. */
export function lastIteration(fc: FirecrackerProcess): number {
  return Math.max(0, ...fc.console.lines().map((line) => parseTestGuestLine(line)?.iteration ?? 0));
}

/** The guest's first progress line past iteration `after` carries the checksum an uninterrupted guest has. */
export async function expectChecksumContinues(fc: FirecrackerProcess, after: number): Promise<number> {
  let since = 0;
  for (;;) {
    const next = await fc.waitForConsole(GUEST_LINE, { timeoutMs: 60_000, since });
    since = next.line.seq + 1;
    const progress = parseTestGuestLine(next.line.text);
    if (!progress || progress.iteration <= after) continue;
    expect(progress.checksum).toBe(expectedGuestChecksums(progress.iteration)[progress.iteration - 1]);
    return progress.iteration;
  }
}
