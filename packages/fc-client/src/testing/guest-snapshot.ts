// What real-Firecracker tests and benchmarks in every package share (no test framework here, so benches
// use it too): a Full snapshot of the tiny test guest taken once it printed a given iteration, and the
// proof that a restored guest goes on with the right checksum.
import { mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { configureAndStart } from "../configure.ts";
import { type FirecrackerProcess, launchFirecracker } from "../launcher.ts";
import {
  buildTestGuest,
  expectedGuestChecksums,
  parseTestGuestLine,
  TEST_GUEST_PROGRESS_PATTERN,
} from "./tiny-guest.ts";

/**
 * `{dir}/vmstate` and `{dir}/mem`: the test guest (128 MiB, one vCPU, booted with `bootArgs`) once it
 * printed iteration `atLeast`.
 */
export async function snapshotTestGuest(
  firecrackerBin: string,
  dir: string,
  options: { atLeast?: number; bootArgs?: string } = {},
): Promise<{ vmstate: string; memory: string }> {
  const atLeast = options.atLeast ?? 2;
  const guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
  await mkdir(dir, { recursive: true });
  await using fc = await launchFirecracker({
    binary: firecrackerBin,
    id: "sbx-test-snapshot",
    logPath: join(dir, "fc.log"),
  });
  await configureAndStart(fc.client, {
    "boot-source": { kernel_image_path: guest, boot_args: options.bootArgs ?? "console=ttyS0" },
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
export function lastIteration(fc: Pick<FirecrackerProcess, "console">): number {
  return Math.max(0, ...fc.console.lines().map((line) => parseTestGuestLine(line)?.iteration ?? 0));
}

/**
 * The guest's first progress line past iteration `after` (read from console line `since` on) must carry
 * the checksum an uninterrupted guest has there (throws otherwise); returns that iteration.
 */
export async function expectChecksumContinues(
  fc: Pick<FirecrackerProcess, "waitForConsole">,
  after: number,
  options: { since?: number; timeoutMs?: number } = {},
): Promise<number> {
  let since = options.since ?? 0;
  for (;;) {
    const next = await fc.waitForConsole(TEST_GUEST_PROGRESS_PATTERN, {
      timeoutMs: options.timeoutMs ?? 60_000,
      since,
    });
    since = next.line.seq + 1;
    const progress = parseTestGuestLine(next.line.text);
    if (!progress || progress.iteration <= after) continue;
    const expected = expectedGuestChecksums(progress.iteration)[progress.iteration - 1];
    if (progress.checksum !== expected)
      throw new Error(
        `the guest's checksum at iteration ${progress.iteration} is ${progress.checksum}, not ${expected}: its memory came back wrong`,
      );
    return progress.iteration;
  }
}
