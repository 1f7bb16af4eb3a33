// Prints JSON: what immutable builds cost, each against a baseline measured in the same run.
// - header depth: faults/s restoring 128 MiB through a memory header whose pages come from 1, 4, 10 and
//   16 builds (sparse layer files: a wrong lookup reads zeros, which the test peer would report), against
//   depth 1. Target: every depth >= 0.9 of depth 1 (a lookup is one table read, whatever the chain).
// - disk clone: cloning a 1 GiB and a 4 GiB rootfs on a loop-mounted XFS with reflink, against a sparse
//   copy of the 1 GiB one on ext4. Target: 4 GiB within 2x of 1 GiB, and both far below the copy.
// - with FIRECRACKER_BIN: create from a template and resume at chain depths 1, 4 and 16 (p50), and one
//   pause of a 512 MiB guest: its time, the memory bytes it owns (the pages the guest dirtied, not the
//   guest's size) and the disk bytes it wrote. Target: resume at depth 16 within 1.2x of depth 1.
// A part whose capability is missing reports `skipped` with the reason.
import { execFileSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statfsSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { configureAndStart, launchFirecracker } from "@sbx/fc-client";
import { buildTestGuest, realFirecracker } from "@sbx/fc-client/testing";
import {
  fullMemoryHeader,
  type MemoryHeader,
  memoryHeaderLayers,
  overlayMemoryHeader,
  PageFaultServer,
  prewarmPageFaultWorkers,
} from "@sbx/uffd";
import { buildTestPeer, runTestPeer, writeTestMemoryFile } from "@sbx/uffd/testing";
import { benchEnvironment } from "../../../scripts/bench-environment.ts";
import { readBuild } from "../src/builds.ts";
import { createConfig } from "../src/config.ts";
import { cloneFile } from "../src/disk-clone.ts";
import { importBuild } from "../src/import-build.ts";
import { openOrchestratorState } from "../src/orchestrator-state.ts";
import { createSandbox, type Sandbox } from "../src/sandbox.ts";
import { testLaunchOptions } from "../src/test-launch-mode.ts";

const MiB = 1024 * 1024;
const PAGE = 4096;
const REPEATS = Number(process.env.BENCH_REPEATS ?? 5);
const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  return Number((sorted[Math.floor(sorted.length / 2)] ?? 0).toFixed(2));
};

/** A header over `size` bytes whose pages are spread over `depth` builds in 64 KiB runs. */
function chainedHeader(size: number, depth: number): MemoryHeader {
  let header = fullMemoryHeader({ build: "B00", memorySize: size });
  for (let d = 1; d < depth; d++) {
    const ranges = [];
    for (let offset = (d - 1) * 16 * PAGE; offset < size; offset += depth * 16 * PAGE)
      ranges.push({ offset, length: 16 * PAGE });
    header = overlayMemoryHeader(header, `B${String(d).padStart(2, "0")}`, ranges);
  }
  return header;
}

async function headerDepth(dir: string) {
  const size = 128 * MiB;
  const expected = join(dir, "expected");
  writeTestMemoryFile(expected, size);
  const bytes = readFileSync(expected);
  const peer = await buildTestPeer();
  prewarmPageFaultWorkers(1);
  const depths = [1, 4, 10, 16];
  const setups = [];
  for (const depth of depths) {
    const header = chainedHeader(size, depth);
    const layers = memoryHeaderLayers(header, (build) => join(dir, `depth${depth}-${build}`));
    // Each build's file holds only its own pages (holes elsewhere), as a Diff snapshot would.
    for (const layer of layers) {
      writeFileSync(layer.path, "");
      execFileSync("truncate", ["-s", String(size), layer.path]);
      const fd = openSync(layer.path, "r+");
      for (const range of layer.ranges) writeSync(fd, bytes, range.offset, range.length, range.offset);
      closeSync(fd);
    }
    setups.push({
      depth,
      header,
      paths: Object.fromEntries(header.builds.map((b, i) => [b, layers[i]!.path])),
    });
  }
  const rates = new Map<number, number[]>(depths.map((d) => [d, []]));
  // Depths take turns within each repeat, so a busy moment of the host lands on all of them alike.
  for (let r = 0; r < REPEATS; r++) {
    for (const { depth, header, paths } of setups) {
      const socketPath = join(dir, "uffd.sock");
      await using server = new PageFaultServer({ socketPath, memory: { header, paths } });
      await server.listen();
      const result = await runTestPeer({
        binary: peer,
        socketPath,
        memoryFile: expected,
        size,
        mode: "random",
        threads: 1,
      });
      if (!result.ok || result.mismatches) throw new Error(`depth ${depth}: ${JSON.stringify(result)}`);
      rates.get(depth)!.push(result.touched / ((result.elapsedNs ?? 1) / 1e9));
    }
  }
  const results = Object.fromEntries(
    setups.map(({ depth, header }) => [
      `depth${depth}`,
      { faultsPerSec: Math.round(median(rates.get(depth)!)), builds: header.builds.length },
    ]),
  );
  prewarmPageFaultWorkers(0);
  const base = results.depth1!.faultsPerSec;
  const ratios = Object.fromEntries(
    Object.entries(results).map(([k, v]) => [k, Number((v.faultsPerSec / base).toFixed(2))]),
  );
  return {
    results,
    ratioToDepth1: ratios,
    target: { minRatio: 0.9, met: Object.values(ratios).every((r) => r >= 0.9) },
  };
}

function hasTool(tool: string) {
  return ["/usr/sbin", "/sbin", "/usr/bin"].some((d) => existsSync(join(d, tool)));
}

async function diskClone(dir: string) {
  if (process.getuid?.() !== 0) return { skipped: "needs root to loop-mount file systems" };
  if (!hasTool("mkfs.xfs")) return { skipped: "needs mkfs.xfs (Debian xfsprogs)" };
  const mounts: string[] = [];
  const mount = (kind: "xfs" | "ext4", size: string) => {
    const image = join(dir, `${kind}.img`);
    writeFileSync(image, "");
    execFileSync("truncate", ["-s", size, image]);
    execFileSync(
      kind === "xfs" ? "mkfs.xfs" : "mkfs.ext4",
      kind === "xfs" ? ["-q", "-m", "reflink=1", image] : ["-q", "-F", image],
    );
    const target = join(dir, kind);
    mkdirSync(target);
    execFileSync("mount", ["-o", "loop", image, target]);
    mounts.push(target);
    return target;
  };
  try {
    const xfs = mount("xfs", "12G");
    const ext4 = mount("ext4", "3G");
    const disk = (root: string, gib: number) => {
      const path = join(root, `disk-${gib}g`);
      // Written, not sparse: a real rootfs has its blocks allocated.
      execFileSync("dd", ["if=/dev/zero", `of=${path}`, "bs=4M", `count=${gib * 256}`, "status=none"]);
      execFileSync("sync");
      return path;
    };
    const timeClones = async (source: string, label: string) => {
      const times: number[] = [];
      for (let r = 0; r < REPEATS; r++) {
        const started = performance.now();
        const method = await cloneFile(source, `${source}.${label}${r}`);
        times.push(performance.now() - started);
        if (r === 0 && method !== (label === "copy" ? "sparse-copy" : "reflink"))
          throw new Error(`${label}: ${method}`);
      }
      return median(times);
    };
    const [one, four] = [disk(xfs, 1), disk(xfs, 4)];
    const free = statfsSync(xfs).bavail;
    const oneGiB = await timeClones(one, "clone");
    const fourGiB = await timeClones(four, "clone");
    execFileSync("sync");
    const clonedBytes = (free - statfsSync(xfs).bavail) * statfsSync(xfs).bsize;
    const copy = await timeClones(disk(ext4, 1), "copy");
    return {
      reflink1GiBMs: oneGiB,
      reflink4GiBMs: fourGiB,
      sparseCopy1GiBMs: copy,
      bytesUsedByClones: clonedBytes,
      target: {
        fourOverOneMax: 2,
        fourOverOne: Number((fourGiB / oneGiB).toFixed(2)),
        met: fourGiB <= 2 * oneGiB + 1,
      },
    };
  } finally {
    for (const target of mounts.reverse()) execFileSync("umount", [target]);
  }
}

async function chains(dir: string) {
  const { binary, skipReason } = realFirecracker({ testGuest: true });
  if (skipReason || !binary) return { skipped: skipReason };
  const guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
  await mkdir(join(dir, "t"));
  await using state = await openOrchestratorState(
    createConfig({ stateDir: join(dir, "state"), firecrackerBin: binary, ...testLaunchOptions() }),
  );
  {
    await using fc = await launchFirecracker({
      binary,
      id: "bench-template",
      logPath: join(dir, "t", "fc.log"),
    });
    await configureAndStart(fc.client, {
      "boot-source": { kernel_image_path: guest, boot_args: "console=ttyS0" },
      "machine-config": { vcpu_count: 1, mem_size_mib: 512, track_dirty_pages: true },
    });
    await fc.waitForConsole(/^SBX-GUEST iter=\d+ /, { timeoutMs: 30_000 });
    await fc.client.patchVm({ state: "Paused" });
    await fc.client.createSnapshot({
      snapshot_type: "Full",
      snapshot_path: join(dir, "t", "vmstate"),
      mem_file_path: join(dir, "t", "mem"),
    });
  }
  await writeFile(join(dir, "t", "disk"), Buffer.alloc(64 * MiB, 1));
  await importBuild(state, {
    template: "bench",
    vmstate: join(dir, "t", "vmstate"),
    memory: join(dir, "t", "mem"),
    rootfs: join(dir, "t", "disk"),
  });
  const alive = /^SBX-GUEST iter=\d+ sum=/;
  prewarmPageFaultWorkers(2);
  const timeCreate = async (options: Parameters<typeof createSandbox>[1]) => {
    const started = performance.now();
    const sandbox = await createSandbox(state, { ...options, alive });
    return { sandbox, ms: performance.now() - started };
  };
  const fromTemplate: number[] = [];
  for (let r = 0; r < REPEATS; r++) {
    const { sandbox, ms } = await timeCreate({ template: "bench" });
    fromTemplate.push(ms);
    await sandbox.kill();
  }
  // A chain of 16 pauses, keeping the paused states at depth 1, 4 and 16.
  let sandbox: Sandbox = (await timeCreate({ template: "bench" })).sandbox;
  const at: Record<number, Awaited<ReturnType<Sandbox["pause"]>>> = {};
  let firstPause:
    | { ms: number; ownedBytes: number; memoryBytes: number; diskBytesWritten: number }
    | undefined;
  for (let depth = 1; depth <= 16; depth++) {
    await sandbox.firecracker.waitForConsole(alive, {
      timeoutMs: 30_000,
      since: sandbox.firecracker.console.position,
    });
    const started = performance.now();
    const paused = await sandbox.pause();
    const ms = performance.now() - started;
    if (depth === 1) {
      const build = await readBuild(state.config, paused.build);
      firstPause = {
        ms: Number(ms.toFixed(1)),
        ownedBytes: build.memory.ownedBytes,
        memoryBytes: build.memory.sizeBytes,
        diskBytesWritten: Number(
          execFileSync("du", ["-B1", "--", join(dir, "state", "builds", paused.build, "rootfs.ext4")], {
            encoding: "utf8",
          }).split("\t")[0],
        ),
      };
    }
    at[depth] = paused;
    sandbox = (await timeCreate({ from: paused })).sandbox;
  }
  await sandbox.kill();
  const resume: Record<string, number> = {};
  for (const depth of [1, 4, 16]) {
    const times: number[] = [];
    for (let r = 0; r < REPEATS; r++) {
      const { sandbox: resumed, ms } = await timeCreate({ from: at[depth]! });
      times.push(ms);
      await resumed.kill();
    }
    resume[`depth${depth}P50Ms`] = median(times);
  }
  prewarmPageFaultWorkers(0);
  return {
    createFromTemplateP50Ms: median(fromTemplate),
    resume,
    pause: {
      ...firstPause,
      note: "the state directory is on this machine's tmp file system (no reflink): the disk is a sparse copy; on XFS/btrfs it is a clone",
    },
    target: {
      depth16OverDepth1Max: 1.2,
      depth16OverDepth1: Number(((resume.depth16P50Ms ?? 0) / (resume.depth1P50Ms ?? 1)).toFixed(2)),
      met: (resume.depth16P50Ms ?? 0) <= 1.2 * (resume.depth1P50Ms ?? 0),
    },
  };
}

const dir = mkdtempSync(join(tmpdir(), "sbx-bench-builds-"));
try {
  const only = process.env.BENCH_PARTS?.split(",");
  const run = async <T>(name: string, part: () => Promise<T>) => {
    if (only && !only.includes(name)) return { skipped: "not in BENCH_PARTS" };
    const partDir = join(dir, name);
    mkdirSync(partDir);
    try {
      return await part.call(undefined);
    } catch (error) {
      return { failed: (error as Error).message };
    }
  };
  const results = {
    headerDepth: await run("header", () => headerDepth(join(dir, "header"))),
    diskClone: await run("clone", () => diskClone(join(dir, "clone"))),
    chains: await run("chains", () => chains(join(dir, "chains"))),
  };
  console.log(JSON.stringify({ environment: benchEnvironment({ benchmark: "builds" }), results }, null, 2));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
