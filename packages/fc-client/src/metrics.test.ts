import { appendFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { FirecrackerLaunchError } from "./errors.ts";
import { parseMetrics, parseMetricsLine, readMetricsFile } from "./metrics.ts";

const line1 = JSON.stringify({
  utc_timestamp_ms: 1700000000000,
  api_server: { process_startup_time_us: 1234, sync_response_fails: 0 },
  vcpu: { exit_io_in: 3, exit_io_in_agg: { min_us: 1, max_us: 9, sum_us: 20 } },
  block_rootfs: { read_count: 7 },
  future_group: { new_counter: 1 },
});

describe("metrics reader", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "sbx-test-metrics-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("parses a line into typed groups and keeps unknown keys", () => {
    const metrics = parseMetricsLine(line1);
    expect(metrics.utc_timestamp_ms).toBe(1700000000000);
    expect(metrics.api_server?.process_startup_time_us).toBe(1234);
    expect(metrics.vcpu?.exit_io_in_agg).toEqual({ min_us: 1, max_us: 9, sum_us: 20 });
    expect(metrics.block_rootfs).toEqual({ read_count: 7 });
    expect(metrics.future_group).toEqual({ new_counter: 1 });
  });

  it("rejects non-JSON and non-metrics lines with the line number", () => {
    expect(() => parseMetrics(`${line1}\n{not json\n`)).toThrow(/metrics line 2 is not JSON/);
    const error = (() => {
      try {
        parseMetricsLine(JSON.stringify({ vmm: { x: 1 } }));
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(FirecrackerLaunchError);
    expect((error as FirecrackerLaunchError).code).toBe("METRICS_INVALID");
    expect((error as Error).message).toMatch(/utc_timestamp_ms/);
  });

  it("reads a growing file incrementally and leaves a partial line for later", async () => {
    const path = join(dir, "metrics.ndjson");
    await writeFile(path, "");
    expect(await readMetricsFile(path)).toEqual({ metrics: [], nextOffset: 0 });
    const line2 = JSON.stringify({ utc_timestamp_ms: 2, vmm: { panic_count: 0 } });
    await writeFile(path, `${line1}\n${line2.slice(0, 10)}`);
    const first = await readMetricsFile(path);
    expect(first.metrics).toHaveLength(1);
    expect(first.nextOffset).toBe(line1.length + 1);
    await appendFile(path, `${line2.slice(10)}\n`);
    const second = await readMetricsFile(path, { fromOffset: first.nextOffset });
    expect(second.metrics.map((m) => m.utc_timestamp_ms)).toEqual([2]);
    expect(second.nextOffset).toBe(line1.length + line2.length + 2);
  });
});
