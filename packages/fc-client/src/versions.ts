// Which Firecracker version has which operation and request field.
//
// Derived from the three spec files sbx carries as test data (v1.10.1, v1.12.1, v1.16.1): a feature
// first seen in spec X gets X's minor as its minimum. `versions.test.ts` re-derives this from the
// specs and fails when the tables drift. Features only land in minor releases, so versions compare by
// major.minor. Where a feature appeared between two spec versions and we measured it on a real
// Firecracker (v1.14.2, with its own "unknown field" / "invalid path" answers), the measured, earlier
// minimum is recorded instead, and the test checks it still lies between the two specs.
import type { OperationId } from "./operations.ts";
import type { DefinitionName } from "./schemas.ts";

/** The spec versions this table was derived from, oldest first. */
export const SPEC_VERSIONS = ["1.10.1", "1.12.1", "1.16.1"] as const;
/** A Firecracker version whose API spec this client was built from. */
export type SpecVersion = (typeof SPEC_VERSIONS)[number];

/** Oldest Firecracker this client knows; anything older is outside every spec it was built from. */
export const OLDEST_KNOWN_VERSION = "1.10.0";

/** Operations missing from the oldest spec: the first minor version that has them. */
export const OPERATION_SINCE: Partial<Record<OperationId, string>> = {
  putGuestPmemByID: "1.14", // measured on 1.14.2
  patchGuestPmemByID: "1.16", // 1.14.2 answers "Invalid request method and/or path"
  putSerialDevice: "1.14", // measured on 1.14.2
  putMemoryHotplug: "1.14", // measured on 1.14.2
  patchMemoryHotplug: "1.14", // measured on 1.14.2
  getMemoryHotplug: "1.14", // measured on 1.14.2
  startBalloonHinting: "1.14", // measured on 1.14.2
  describeBalloonHinting: "1.14", // measured on 1.14.2
  stopBalloonHinting: "1.14", // measured on 1.14.2
};

/** Fields missing from the oldest spec, per definition: the first minor version that has them. */
export const FIELD_SINCE: Partial<Record<DefinitionName, Readonly<Record<string, string>>>> = {
  Balloon: { free_page_hinting: "1.14", free_page_reporting: "1.14" }, // measured on 1.14.2
  BalloonStats: {
    oom_kill: "1.16",
    alloc_stall: "1.16",
    async_scan: "1.16",
    direct_scan: "1.16",
    async_reclaim: "1.16",
    direct_reclaim: "1.16",
  },
  CpuConfig: { kvm_capabilities: "1.12", vcpu_features: "1.12" },
  FullVmConfiguration: { pmem: "1.14", "memory-hotplug": "1.14" }, // measured: 1.14.2 exports both
  MmdsConfig: { imds_compat: "1.14" }, // measured on 1.14.2
  NetworkInterface: { mtu: "1.16" }, // 1.14.2: unknown field `mtu`
  SnapshotLoadParams: {
    network_overrides: "1.12",
    track_dirty_pages: "1.14", // measured on 1.14.2
    clock_realtime: "1.16", // 1.14.2: unknown field
    vsock_override: "1.16", // 1.14.2: unknown field
  },
};

/** A Firecracker version as numbers (major, minor, patch). */
export interface ParsedVersion {
  major: number;
  minor: number;
  patch: number;
}

/** Parses "1.14.2", "v1.14.2" or "1.14.2-dev" (what `GET /version` and `--version` print). */
export function parseFirecrackerVersion(text: string): ParsedVersion | undefined {
  const match = /^v?(\d+)\.(\d+)(?:\.(\d+))?/.exec(text.trim());
  if (!match) return undefined;
  return { major: Number(match[1]), minor: Number(match[2]), patch: Number(match[3] ?? 0) };
}

/** True when `version` (a full version) is at least `minimum` (a "major.minor" or full version). */
export function versionAtLeast(version: ParsedVersion, minimum: string): boolean {
  const min = parseFirecrackerVersion(minimum);
  if (!min) throw new TypeError(`not a version: ${minimum}`);
  if (version.major !== min.major) return version.major > min.major;
  return version.minor >= min.minor;
}
