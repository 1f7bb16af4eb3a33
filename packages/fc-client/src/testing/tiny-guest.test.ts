import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { configureAndStart } from "../configure.ts";
import { FirecrackerLaunchError } from "../errors.ts";
import { type FirecrackerProcess, launchFirecracker } from "../launcher.ts";
import { readMetricsFile } from "../metrics.ts";
import { childPids, fdCount, launcherTempDirs, settle } from "../test-process-counts.ts";
import { realFirecracker } from "./real-firecracker.ts";
import {
  buildTestGuest,
  expectedGuestChecksums,
  parseTestGuestBalloon,
  parseTestGuestLine,
  TEST_GUEST_CFLAGS,
  TEST_GUEST_READY_MARKER,
  testGuestBalloonBootArg,
  testGuestBalloonScratch,
  testGuestSourceDir,
} from "./tiny-guest.ts";

function hasGcc(): boolean {
  try {
    execFileSync("gcc", ["--version"], { stdio: "ignore" });
    return process.arch === "x64";
  } catch {
    return false;
  }
}
const gccReason = hasGcc() ? undefined : "gcc for x86_64 not available";
if (gccReason) console.log(`[fc-client] test guest build tests skipped: ${gccReason}`);

/** Program headers of a 64-bit little-endian ELF. */
function programHeaders(
  path: string,
): { type: number; offset: number; vaddr: number; paddr: number; filesz: number }[] {
  const elf = readFileSync(path);
  const phoff = Number(elf.readBigUInt64LE(32));
  const phentsize = elf.readUInt16LE(54);
  const phnum = elf.readUInt16LE(56);
  return Array.from({ length: phnum }, (_, i) => {
    const at = phoff + i * phentsize;
    return {
      type: elf.readUInt32LE(at),
      offset: Number(elf.readBigUInt64LE(at + 8)),
      vaddr: Number(elf.readBigUInt64LE(at + 16)),
      paddr: Number(elf.readBigUInt64LE(at + 24)),
      filesz: Number(elf.readBigUInt64LE(at + 32)),
    };
  });
}

describe("test guest", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sbx-guest-test-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("ships its C source and linker script and builds without -march=native", () => {
    const files = [
      join(testGuestSourceDir(), "sbx-test-guest.c"),
      join(testGuestSourceDir(), "sbx-test-guest.ld"),
    ];
    for (const file of files) expect(readFileSync(file, "utf8").length).toBeGreaterThan(100);
    expect(TEST_GUEST_CFLAGS.some((flag) => flag.startsWith("-march"))).toBe(false);
    expect(TEST_GUEST_CFLAGS).toEqual(expect.arrayContaining(["-ffreestanding", "-nostdlib", "-static"]));
  });

  it.skipIf(gccReason !== undefined)(
    `builds an x86_64 ELF with one PT_LOAD at 1 MiB, cached by source hash${gccReason ? ` (skipped: ${gccReason})` : ""}`,
    async () => {
      const built = await buildTestGuest({ outDir: dir });
      expect(built.cached).toBe(false);
      expect(built.sourceHash).toMatch(/^[0-9a-f]{64}$/);
      const elf = readFileSync(built.path);
      expect(elf.readUInt32BE(0)).toBe(0x7f454c46);
      expect(elf[4]).toBe(2); // 64-bit
      expect(elf.readUInt16LE(18)).toBe(62); // EM_X86_64
      expect(Number(elf.readBigUInt64LE(24))).toBe(0x100000); // entry
      const loads = programHeaders(built.path).filter((ph) => ph.type === 1);
      expect(loads).toHaveLength(1);
      expect(loads[0]!.paddr).toBe(0x100000);
      expect(loads[0]!.vaddr).toBe(0x100000);
      expect(elf.includes(Buffer.from("SBX-GUEST-READY"))).toBe(true);

      const mtime = (await stat(built.path)).mtimeMs;
      const again = await buildTestGuest({ outDir: dir });
      expect(again).toEqual({ ...built, cached: true });
      expect((await stat(again.path)).mtimeMs).toBe(mtime);
      expect((await readdir(dir)).filter((name) => name.endsWith(".tmp"))).toEqual([]);
    },
  );

  it("reports a missing compiler as GUEST_BUILD_FAILED with the fix", async () => {
    const error = await buildTestGuest({ outDir: dir, compiler: "sbx-no-such-gcc" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FirecrackerLaunchError);
    expect((error as FirecrackerLaunchError).code).toBe("GUEST_BUILD_FAILED");
    expect((error as Error).message).toMatch(/not installed/);
    expect((await readdir(dir)).filter((name) => name.endsWith(".tmp"))).toEqual([]);
  });

  it("predicts the checksums the guest prints and parses its lines", () => {
    // Values printed by the guest under Firecracker v1.14.2 (first three iterations).
    expect(expectedGuestChecksums(3)).toEqual(["ae0435bd", "984a9731", "bb378e31"]);
    expect(parseTestGuestLine("SBX-GUEST iter=42 sum=0badf00d")).toEqual({
      iteration: 42,
      checksum: "0badf00d",
    });
    expect(parseTestGuestLine("SBX-GUEST-READY")).toBeUndefined();
    expect(parseTestGuestLine("SBX-GUEST iter=1 sum=xyz")).toBeUndefined();
  });
});

const MiB = 1024 * 1024;

describe("the test guest's balloon driver", () => {
  it("asks for a scratch that fits below 1 GiB and says where it lies", () => {
    expect(testGuestBalloonBootArg({ scratchMib: 48 })).toBe("sbx.balloon-scratch-mib=48");
    expect(testGuestBalloonScratch({ scratchMib: 48 })).toEqual({
      start: 64 * MiB,
      end: 112 * MiB,
      minMemMib: 112,
    });
    expect(testGuestBalloonScratch({ scratchMib: 16, regionShiftMib: 48 })).toEqual({
      start: 112 * MiB,
      end: 128 * MiB,
      minMemMib: 128,
    });
    for (const options of [
      { scratchMib: 0 },
      { scratchMib: 1.5 },
      { scratchMib: 961 },
      { scratchMib: 1, regionShiftMib: -1 },
    ])
      expect(() => testGuestBalloonBootArg(options)).toThrow(
        expect.objectContaining({ code: "INVALID_OPTIONS", constructor: FirecrackerLaunchError }),
      );
  });

  it("parses its lines, also when the console lost a newline between two", () => {
    expect(
      parseTestGuestBalloon([
        "SBX-GUEST balloon ready features=0000000100000020 reporting-queue=2 scratch=0000000004000000+50331648",
        "SBX-GUEST balloon touched bytes=50331648 round=7SBX-GUEST iter=3 sum=bb378e31",
        "SBX-GUEST balloon reported bytes=50331648",
        "SBX-GUEST balloon error=no-device",
        "SBX-GUEST iter=4 sum=00000000",
      ]),
    ).toEqual([
      {
        kind: "ready",
        features: (1n << 32n) | (1n << 5n),
        reportingQueue: 2,
        scratchStart: 64 * MiB,
        scratchBytes: 48 * MiB,
      },
      { kind: "touched", bytes: 48 * MiB, round: 7 },
      { kind: "reported", bytes: 48 * MiB },
      { kind: "error", reason: "no-device" },
    ]);
  });
});

const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker({ testGuest: true });
if (firecrackerSkip) console.log(`[fc-client] test guest balloon boot skipped: ${firecrackerSkip}`);

function residentBytes(pid: number): number {
  return Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024;
}

/** Every progress line so far carries the checksum an uninterrupted guest has at its iteration. */
function expectChecksumsRight(fc: FirecrackerProcess): number {
  const progress = fc.console.lines().flatMap((line) => parseTestGuestLine(line) ?? []);
  expect(progress.length).toBeGreaterThan(0);
  const expected = expectedGuestChecksums(progress.at(-1)!.iteration);
  for (const { iteration, checksum } of progress) expect(checksum).toBe(expected[iteration - 1]);
  return progress.at(-1)!.iteration;
}

describe.skipIf(firecrackerSkip !== undefined)(
  `the test guest's balloon driver with Firecracker${firecrackerSkip ? ` (skipped: ${firecrackerSkip})` : ""}`,
  () => {
    let dir: string;
    let guest: string;
    let before: { fds: number; children: number[]; temps: string[] };
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "sbx-guest-balloon-"));
      guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
      before = { fds: fdCount(), children: childPids(), temps: launcherTempDirs("sbx-guest-balloon") };
    });
    afterAll(async () => {
      if (before) {
        await settle(100);
        expect(childPids()).toEqual(before.children);
        expect(fdCount()).toBe(before.fds);
        expect(launcherTempDirs("sbx-guest-balloon")).toEqual(before.temps);
      }
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it("negotiates free page reporting, dirties its scratch, reports it free when the target rises: Firecracker's resident memory drops", async () => {
      const scratch = 48 * MiB;
      const metricsPath = join(dir, "metrics.ndjson");
      await using fc = await launchFirecracker({
        binary: firecrackerBin!,
        id: "sbx-guest-balloon",
        logPath: join(dir, "firecracker.log"),
        metricsPath,
      });
      await configureAndStart(fc.client, {
        "boot-source": {
          kernel_image_path: guest,
          boot_args: `console=ttyS0 ${testGuestBalloonBootArg({ scratchMib: scratch / MiB })}`,
        },
        "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
        balloon: {
          amount_mib: 0,
          deflate_on_oom: true,
          stats_polling_interval_s: 0,
          free_page_reporting: true,
        },
      });
      await fc.waitForConsole(TEST_GUEST_READY_MARKER, { timeoutMs: 30_000 });
      // Firecracker offers VERSION_1, DEFLATE_ON_OOM and REPORTING here; the driver takes the two it needs.
      expect(parseTestGuestBalloon(fc.console.lines())).toEqual([
        {
          kind: "ready",
          features: (1n << 32n) | (1n << 5n),
          reportingQueue: 2,
          scratchStart: 64 * MiB,
          scratchBytes: scratch,
        },
      ]);

      // Two rounds: the scratch is resident, whatever the first round overlapped with.
      let since = fc.console.position;
      for (let round = 0; round < 2; round++)
        since =
          (await fc.waitForConsole(/SBX-GUEST balloon touched /, { timeoutMs: 30_000, since })).line.seq + 1;
      const dirty = residentBytes(fc.pid);

      since = fc.console.position;
      await fc.client.patchBalloon({ amount_mib: 1 });
      await fc.waitForConsole(/SBX-GUEST balloon reported bytes=/, { timeoutMs: 30_000, since });
      const reported = residentBytes(fc.pid);
      // The guest stays reported while the target stays: two more cycles, no touch.
      for (let cycle = 0; cycle < 2; cycle++)
        since = (await fc.waitForConsole(/SBX-GUEST iter=/, { timeoutMs: 30_000, since })).line.seq + 1;
      const held = residentBytes(fc.pid);
      const afterReport = fc.console
        .lines()
        .slice(fc.console.lines().findIndex((l) => l.includes("balloon reported")));
      expect(parseTestGuestBalloon(afterReport).map((e) => e.kind)).toEqual(["reported"]);

      // Back to 0: the guest takes its scratch again.
      since = fc.console.position;
      await fc.client.patchBalloon({ amount_mib: 0 });
      await fc.waitForConsole(/SBX-GUEST balloon touched /, { timeoutMs: 30_000, since });
      const again = residentBytes(fc.pid);

      await fc.client.createSyncAction({ action_type: "FlushMetrics" });
      const { metrics } = await readMetricsFile(metricsPath);
      const freed = metrics.reduce((sum, m) => sum + Number(m.balloon?.free_page_report_freed ?? 0), 0);
      const fails = metrics.reduce((sum, m) => sum + Number(m.balloon?.free_page_report_fails ?? 0), 0);
      console.log(
        `[fc-client] balloon: resident ${dirty / MiB} MiB dirty, ${reported / MiB} MiB reported, ${held / MiB} MiB held, ${again / MiB} MiB touched again; Firecracker freed ${freed / MiB} MiB`,
      );
      // Firecracker discarded exactly the scratch, and its resident memory shows it.
      expect(freed).toBe(scratch);
      expect(fails).toBe(0);
      expect(dirty - reported).toBeGreaterThanOrEqual(scratch - 4 * MiB);
      expect(held).toBeLessThan(dirty - (scratch - 4 * MiB));
      expect(again - held).toBeGreaterThanOrEqual(scratch - 4 * MiB);
      expectChecksumsRight(fc);
    }, 120_000);

    it("with statistics on (reporting is then queue 3) it reports again after a snapshot restore", async () => {
      const scratch = 16 * MiB;
      const snapshot = { snapshot_path: join(dir, "vmstate"), mem_file_path: join(dir, "mem") };
      {
        await using fc = await launchFirecracker({
          binary: firecrackerBin!,
          id: "sbx-guest-balloon-snap",
          logPath: join(dir, "firecracker-snap.log"),
        });
        await configureAndStart(fc.client, {
          "boot-source": {
            kernel_image_path: guest,
            boot_args: `console=ttyS0 ${testGuestBalloonBootArg({ scratchMib: scratch / MiB })}`,
          },
          "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
          balloon: {
            amount_mib: 0,
            deflate_on_oom: false,
            stats_polling_interval_s: 1,
            free_page_reporting: true,
          },
        });
        await fc.waitForConsole(/SBX-GUEST balloon touched /, { timeoutMs: 30_000 });
        expect(parseTestGuestBalloon(fc.console.lines())[0]).toMatchObject({
          kind: "ready",
          reportingQueue: 3,
        });
        // One report and back before the snapshot, so the restored queue is past its first buffer.
        let since = fc.console.position;
        await fc.client.patchBalloon({ amount_mib: 1 });
        await fc.waitForConsole(/SBX-GUEST balloon reported /, { timeoutMs: 30_000, since });
        since = fc.console.position;
        await fc.client.patchBalloon({ amount_mib: 0 });
        await fc.waitForConsole(/SBX-GUEST balloon touched /, { timeoutMs: 30_000, since });
        await fc.client.patchVm({ state: "Paused" });
        await fc.client.createSnapshot({ snapshot_type: "Full", ...snapshot });
      }
      await using restored = await launchFirecracker({
        binary: firecrackerBin!,
        id: "sbx-guest-balloon-restored",
        logPath: join(dir, "firecracker-restored.log"),
      });
      await restored.client.loadSnapshot({
        snapshot_path: snapshot.snapshot_path,
        mem_backend: { backend_type: "File", backend_path: snapshot.mem_file_path },
        resume_vm: true,
      });
      let since = 0;
      for (let round = 0; round < 2; round++)
        since =
          (await restored.waitForConsole(/SBX-GUEST balloon touched /, { timeoutMs: 30_000, since })).line
            .seq + 1;
      const dirty = residentBytes(restored.pid);
      since = restored.console.position;
      await restored.client.patchBalloon({ amount_mib: 1 });
      await restored.waitForConsole(/SBX-GUEST balloon reported /, { timeoutMs: 30_000, since });
      expect(dirty - residentBytes(restored.pid)).toBeGreaterThanOrEqual(scratch - 4 * MiB);
      expect(parseTestGuestBalloon(restored.console.lines()).filter((e) => e.kind === "error")).toEqual([]);
      expectChecksumsRight(restored);
    }, 120_000);

    it("without a balloon device it says so and walks as always", async () => {
      await using fc = await launchFirecracker({
        binary: firecrackerBin!,
        id: "sbx-guest-balloon-none",
        logPath: join(dir, "firecracker-none.log"),
      });
      await configureAndStart(fc.client, {
        "boot-source": {
          kernel_image_path: guest,
          boot_args: `console=ttyS0 ${testGuestBalloonBootArg({ scratchMib: 16 })}`,
        },
        "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
      });
      await fc.waitForConsole(/^SBX-GUEST iter=([2-9]|\d\d+) /, { timeoutMs: 30_000 });
      expect(parseTestGuestBalloon(fc.console.lines())).toEqual([{ kind: "error", reason: "no-device" }]);
      expect(expectChecksumsRight(fc)).toBeGreaterThanOrEqual(2);
    }, 60_000);
  },
);
