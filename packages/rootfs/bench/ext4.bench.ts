// Prints one JSON document: a ~200 MiB, 3-layer OCI image (generateRealisticImage) turned into an ext4
// image by @sbx/rootfs, next to a baseline measured in the same run: `tar -x` of each layer with
// whiteouts ignored, then the same `mkfs.ext4 -d`. Targets: wall time within 1.3x the baseline,
// peak RSS under 200 MiB.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { benchEnvironment } from "../../../scripts/bench-environment.ts";
import { ensureBenchFixture } from "./fixture.ts";

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const cache = process.env.SBX_BENCH_CACHE ?? join(tmpdir(), "sbx-bench-cache");
const variantScript = fileURLToPath(new URL("./ext4-variant.ts", import.meta.url));
const missing = ["mkfs.ext4", "e2fsck", "tar", "gzip"].filter((tool) => {
  try {
    execFileSync("sh", ["-c", `command -v ${tool}`], { stdio: "ignore" });
    return false;
  } catch {
    return true;
  }
});
if (missing.length > 0 || !existsSync("/usr/bin/time")) {
  console.log(
    JSON.stringify({
      ...benchEnvironment({ benchmark: "rootfs-ext4" }),
      skipped: `missing tools: ${[...missing, ...(existsSync("/usr/bin/time") ? [] : ["/usr/bin/time"])].join(", ")}`,
    }),
  );
  process.exit(0);
}

const fixtureStart = performance.now();
const fixture = await ensureBenchFixture(cache);
const fixtureMs = Math.round(performance.now() - fixtureStart);

interface Run {
  wallMs: number;
  peakRssKiB: number;
  detail: Record<string, unknown>;
}

function runVariant(variant: "sbx" | "baseline", extra: string[]): Run {
  const timeFile = join(tmpdir(), `sbx-bench-time-${process.pid}`);
  const work = join(cache, `work-${variant}-${process.pid}`);
  const start = performance.now();
  const child = spawnSync(
    "/usr/bin/time",
    [
      "-f",
      "%M",
      "-o",
      timeFile,
      process.execPath,
      "--conditions=@sbx/source",
      variantScript,
      "--variant",
      variant,
      "--layout",
      fixture.layout,
      "--layers",
      fixture.layers.join(","),
      "--work",
      work,
      ...extra,
    ],
    { encoding: "utf8", maxBuffer: 16 * 1024 * 1024 },
  );
  const wallMs = Math.round(performance.now() - start);
  if (child.status !== 0) {
    throw new Error(`${variant} run failed (${child.status}): ${child.stderr}`);
  }
  const peakRssKiB = Number(readFileSync(timeFile, "utf8").trim().split("\n").at(-1));
  rmSync(timeFile, { force: true });
  return { wallMs, peakRssKiB, detail: JSON.parse(child.stdout.trim().split("\n").at(-1) as string) };
}

// One discarded warm-up of each (page cache, lazy module compilation), then alternating rounds
// whose order flips each time, so neither side always runs on a warmer cache.
const warmup = runVariant("sbx", []);
const sameMkfs = ["--size", String(warmup.detail.sizeBytes), "--inodes", String(warmup.detail.inodes)];
runVariant("baseline", sameMkfs);
const sbxRuns: Run[] = [];
const baselineRuns: Run[] = [];
for (let round = 0; round < ROUNDS; round++) {
  if (round % 2 === 0) {
    sbxRuns.push(runVariant("sbx", []));
    baselineRuns.push(runVariant("baseline", sameMkfs));
  } else {
    baselineRuns.push(runVariant("baseline", sameMkfs));
    sbxRuns.push(runVariant("sbx", []));
  }
}
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)] as number;
};
const sbxWall = median(sbxRuns.map((r) => r.wallMs));
const baseWall = median(baselineRuns.map((r) => r.wallMs));
const sbxPeakMiB = Math.max(...sbxRuns.map((r) => r.peakRssKiB)) / 1024;
const ratio = Number((sbxWall / baseWall).toFixed(3));

console.log(
  JSON.stringify(
    {
      ...benchEnvironment({ benchmark: "rootfs-ext4", rounds: ROUNDS }),
      fixture: {
        layers: fixture.layers.length,
        uncompressedMiB: Number((fixture.uncompressedBytes / 1024 / 1024).toFixed(1)),
        files: fixture.files,
        generateMs: fixtureMs,
      },
      sbx: { medianWallMs: sbxWall, peakRssMiB: Number(sbxPeakMiB.toFixed(1)), runs: sbxRuns },
      baseline: {
        medianWallMs: baseWall,
        peakRssMiB: Number((Math.max(...baselineRuns.map((r) => r.peakRssKiB)) / 1024).toFixed(1)),
        runs: baselineRuns,
      },
      wallTimeRatio: ratio,
      targets: {
        wallTimeRatio: { max: 1.3, met: ratio <= 1.3 },
        peakRssMiB: { max: 200, met: sbxPeakMiB < 200 },
      },
    },
    null,
    2,
  ),
);
