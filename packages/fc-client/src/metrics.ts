import { open } from "node:fs/promises";
import { z } from "zod";
import { FirecrackerLaunchError } from "./errors.ts";

/** A metrics value: a counter, or an aggregate such as `{ min_us, max_us, sum_us }`. */
const metricValueSchema = z.union([z.number(), z.record(z.string(), z.number())]);
/** One metrics group (`vmm`, `block`, `block_<drive_id>`, `net_<iface>`, `latencies_us`, ...). */
export const metricsGroupSchema: z.ZodType<Record<string, number | Record<string, number>>> = z.record(
  z.string(),
  metricValueSchema,
);
/** One group of Firecracker's metrics (counters by name). */
export type MetricsGroup = z.infer<typeof metricsGroupSchema>;

const group = metricsGroupSchema.optional();

/**
 * One flush of Firecracker's metrics (one line of the metrics file). The well-known groups are
 * typed; every other key (per-device groups, fields of newer versions) is kept as it came.
 */
export const firecrackerMetricsSchema = z.looseObject({
  utc_timestamp_ms: z.number(),
  api_server: group,
  balloon: group,
  block: group,
  deprecated_api: group,
  entropy: group,
  get_api_requests: group,
  i8042: group,
  latencies_us: group,
  logger: group,
  mmds: group,
  net: group,
  patch_api_requests: group,
  put_api_requests: group,
  seccomp: group,
  signals: group,
  uart: group,
  vcpu: group,
  vhost_user_block: group,
  vmm: group,
  vsock: group,
});
/** One flush of Firecracker's metrics file, typed where the groups are known. */
export type FirecrackerMetrics = z.infer<typeof firecrackerMetricsSchema>;

/** Parses one metrics line (a JSON object) into typed metrics; unknown keys are kept. */
export function parseMetricsLine(line: string, where = "metrics line"): FirecrackerMetrics {
  let json: unknown;
  try {
    json = JSON.parse(line);
  } catch (cause) {
    throw new FirecrackerLaunchError("METRICS_INVALID", `${where} is not JSON: ${(cause as Error).message}`, {
      cause,
      details: { line: line.slice(0, 200) },
    });
  }
  const parsed = firecrackerMetricsSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new FirecrackerLaunchError(
      "METRICS_INVALID",
      `${where} is not a Firecracker metrics object: ${issue?.path.join(".") || "(root)"}: ${issue?.message}`,
      { cause: parsed.error, details: { line: line.slice(0, 200) } },
    );
  }
  return parsed.data;
}

/** Parses newline-delimited metrics text; blank lines are skipped. */
export function parseMetrics(text: string): FirecrackerMetrics[] {
  const out: FirecrackerMetrics[] = [];
  const lines = text.split("\n");
  for (const [index, line] of lines.entries()) {
    if (line.trim() === "") continue;
    out.push(parseMetricsLine(line, `metrics line ${index + 1}`));
  }
  return out;
}

/** The metrics flushes read from a file, and the offset to continue from. */
export interface ReadMetricsResult {
  metrics: FirecrackerMetrics[];
  /** Byte offset after the last complete line: pass it as `fromOffset` to read only newer flushes. */
  nextOffset: number;
}

/**
 * Reads the complete lines of a Firecracker metrics file (`--metrics-path` or `PUT /metrics`) from
 * `fromOffset` on. A trailing line without its newline (a flush in progress) is left for the next read.
 */
export async function readMetricsFile(
  path: string,
  options: { fromOffset?: number } = {},
): Promise<ReadMetricsResult> {
  const fromOffset = options.fromOffset ?? 0;
  const handle = await open(path, "r");
  try {
    const { size } = await handle.stat();
    if (size <= fromOffset) return { metrics: [], nextOffset: fromOffset };
    const buffer = Buffer.alloc(size - fromOffset);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, fromOffset);
    const text = buffer.subarray(0, bytesRead).toString("utf8");
    const lastNewline = text.lastIndexOf("\n");
    if (lastNewline === -1) return { metrics: [], nextOffset: fromOffset };
    const complete = text.slice(0, lastNewline + 1);
    return {
      metrics: parseMetrics(complete),
      nextOffset: fromOffset + Buffer.byteLength(complete, "utf8"),
    };
  } finally {
    await handle.close();
  }
}
