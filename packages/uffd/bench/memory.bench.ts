// Prints JSON: memfd export GiB/s (scattered 4 KiB pages and 2 MiB ranges) for exportRanges, with the
// native helper and with the JS pwrite loop, next to a C floor (pwrite from the mapping, one call per
// range) measured in the same run, target >= 0.9; and the cost of trackDirty on faults/s (a restore
// with and without write-protect tracking, same peer, same run).
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostArch } from "@sbx/arch";
import { benchEnvironment } from "../../../scripts/bench-environment.ts";
import { createMemfd, exportRanges } from "../src/memfd.ts";
import { resolveNativeHelper } from "../src/native-helper.ts";
import { PageFaultServer } from "../src/server.ts";
import { buildTestPeer, runTestPeer, writeTestMemoryFile } from "../src/testing/peer.ts";

const MiB = 1024 * 1024;
const SIZE = Number(process.env.BENCH_EXPORT_MIB ?? 256) * MiB;
const REPEATS = Number(process.env.BENCH_REPEATS ?? 3);
const dir = mkdtempSync(join(tmpdir(), "sbx-uffd-memory-bench-"));
const floorBinary = join(dir, "export-floor");
execFileSync("gcc", [
  "-O2",
  "-march=x86-64",
  "-o",
  floorBinary,
  new URL("./export-floor.c", import.meta.url).pathname,
]);
const helper = resolveNativeHelper("auto", hostArch());
const median = (values: number[]) =>
  [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] as number;
const gib = (bytes: number, seconds: number) => Number((bytes / seconds / 2 ** 30).toFixed(3));

const results: Record<string, unknown> = {};
try {
  await using memfd = createMemfd("bench", SIZE);
  const fill = Buffer.alloc(MiB);
  for (let i = 0; i < fill.length; i += 64) fill[i] = (i >> 12) & 0xff;
  for (let offset = 0; offset < SIZE; offset += MiB) writeSync(memfd.fd, fill, 0, MiB, offset);

  for (const shape of ["4k", "2m"] as const) {
    const ranges: { offset: number; length: number }[] = [];
    const step = shape === "4k" ? 8 * 4096 : 4 * MiB;
    const length = shape === "4k" ? 4096 : 2 * MiB;
    for (let offset = 0; offset + length <= SIZE; offset += step) ranges.push({ offset, length });
    const bytes = ranges.length * length;
    const floor: number[] = [];
    const native: number[] = [];
    const js: number[] = [];
    for (let r = 0; r < REPEATS; r++) {
      floor.push(
        Number(
          execFileSync(floorBinary, [join(dir, "floor.out"), String(SIZE), shape], { encoding: "utf8" }),
        ),
      );
      rmSync(join(dir, "floor.out"));
      for (const [choice, into] of [
        [helper ?? "off", native],
        ["off", js],
      ] as const) {
        if (choice === "off" && into === native) continue;
        const out = join(dir, `ours-${r}.out`);
        const started = performance.now();
        exportRanges(memfd, ranges, out, { nativeHelper: choice });
        into.push((performance.now() - started) / 1000);
        rmSync(out);
      }
    }
    const floorGib = gib(bytes, median(floor));
    const entry: Record<string, unknown> = { ranges: ranges.length, bytes, cFloorGiBps: floorGib };
    const jsGib = gib(bytes, median(js));
    entry.jsPwrite = { GiBps: jsGib, ratio: Number((jsGib / floorGib).toFixed(3)) };
    if (native.length) {
      const nativeGib = gib(bytes, median(native));
      const ratio = nativeGib / floorGib;
      entry.nativePwrite = {
        GiBps: nativeGib,
        ratio: Number(ratio.toFixed(3)),
        target: { min: 0.9, met: ratio >= 0.9 },
      };
    } else {
      entry.nativePwrite = { skipped: "no native helper (pnpm --filter @sbx/uffd build:native)" };
    }
    results[`export-${shape}`] = entry;
  }

  // The cost of dirty tracking: the same sequential restore, with and without write-protect.
  const memoryFile = join(dir, "mem");
  const regionSize = 64 * MiB;
  writeTestMemoryFile(memoryFile, regionSize);
  const peer = await buildTestPeer();
  const faultsPerSecond = async (trackDirty: boolean) => {
    const socketPath = join(dir, "u.sock");
    await using server = new PageFaultServer({ socketPath, memoryFile, trackDirty, nativeHelper: "off" });
    await server.listen();
    const result = await runTestPeer({
      binary: peer,
      socketPath,
      memoryFile,
      size: regionSize,
      mode: "write",
    });
    return result.touched / ((result.elapsedNs ?? 1) / 1e9);
  };
  const plain: number[] = [];
  const tracked: number[] = [];
  for (let r = 0; r < REPEATS; r++) {
    plain.push(await faultsPerSecond(false));
    tracked.push(await faultsPerSecond(true));
  }
  results.trackDirtyCost = {
    faultsPerSecondWithout: Math.round(median(plain)),
    faultsPerSecondWith: Math.round(median(tracked)),
    ratio: Number((median(tracked) / median(plain)).toFixed(3)),
    note: "pure-ffi path both ways (dirty tracking needs the JS loop); write faults, so pages are dirty on arrival",
  };
} finally {
  rmSync(dir, { recursive: true, force: true });
}

console.log(
  JSON.stringify(
    {
      environment: benchEnvironment({
        benchmark: "uffd snapshot memory",
        exportMiB: SIZE / MiB,
        nativeHelper: helper ?? null,
      }),
      results,
    },
    null,
    2,
  ),
);
