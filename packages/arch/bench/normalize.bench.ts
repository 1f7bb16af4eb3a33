// Prints JSON: the cost of @sbx/arch's hot helpers next to the raw operation each one wraps, measured in
// the same run. normalizeArch runs on every request that reads TARGET_ARCH; detectBinaryArch on every
// artifact resolution.
import { open } from "node:fs/promises";
import { performance } from "node:perf_hooks";
import { benchEnvironment } from "../../../scripts/bench-environment.ts";
import { detectBinaryArch, normalizeArch } from "../src/index.ts";

function opsPerSecond(iterations: number, run: () => void): number {
  for (let i = 0; i < 1000; i++) run();
  const start = performance.now();
  for (let i = 0; i < iterations; i++) run();
  return iterations / ((performance.now() - start) / 1000);
}

async function asyncOpsPerSecond(iterations: number, run: () => Promise<unknown>): Promise<number> {
  for (let i = 0; i < 100; i++) await run();
  const start = performance.now();
  for (let i = 0; i < iterations; i++) await run();
  return iterations / ((performance.now() - start) / 1000);
}

const values = ["x86_64", " AARCH64 ", "amd64", "arm64/v8"];
const table: Record<string, string> = {
  x86_64: "amd64",
  aarch64: "arm64",
  amd64: "amd64",
  "arm64/v8": "arm64",
};
let index = 0;
const normalize = opsPerSecond(1_000_000, () => {
  normalizeArch(values[index++ % values.length], { strict: true });
});
const lookup = opsPerSecond(1_000_000, () => {
  table[(values[index++ % values.length] ?? "").trim().toLowerCase()];
});

const binary = process.execPath;
const detect = await asyncOpsPerSecond(5_000, () => detectBinaryArch(binary));
const rawRead = await asyncOpsPerSecond(5_000, async () => {
  const handle = await open(binary, "r");
  try {
    await handle.read(Buffer.alloc(0x210), 0, 0x210, 0);
  } finally {
    await handle.close();
  }
});

console.log(
  JSON.stringify(
    {
      environment: benchEnvironment({ codePath: "pure TypeScript" }),
      results: [
        {
          name: "normalizeArch",
          opsPerSecond: normalize,
          baseline: "trim+lowercase+table lookup",
          baselineOpsPerSecond: lookup,
          ratio: normalize / lookup,
        },
        {
          name: "detectBinaryArch",
          opsPerSecond: detect,
          baseline: "open+read header+close",
          baselineOpsPerSecond: rawRead,
          ratio: detect / rawRead,
        },
      ],
    },
    null,
    2,
  ),
);
