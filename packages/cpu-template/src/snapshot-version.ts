// Which Firecracker can load a snapshot which Firecracker wrote. A microVM state file carries a snapshot
// data format version (MAJOR.MINOR.PATCH) independent of the Firecracker version; a Firecracker loads a
// file whose format has its own MAJOR and a MINOR no newer than its own (src/vmm/src/snapshot/mod.rs:
// `version.major != SNAPSHOT_VERSION.major || version.minor > SNAPSHOT_VERSION.minor` is refused).
// Since the bitcode encoding (v1.7) every state change bumps MAJOR, so in practice only releases that
// share a format load each other's snapshots, in both directions.
import { z } from "zod";
import { CpuTemplateError } from "./errors.ts";

/**
 * `SNAPSHOT_VERSION` of each Firecracker release since the format got its own version (read from each
 * release tag's source). A patch release can change it (1.10.0 wrote 3.0.0, 1.10.1 writes 4.0.0).
 */
const SNAPSHOT_FORMAT_BY_RELEASE: ReadonlyMap<string, string> = new Map([
  ["1.7.0", "1.0.0"],
  ["1.8.0", "2.0.0"],
  ["1.9.0", "3.0.0"],
  ["1.9.1", "3.0.0"],
  ["1.10.0", "3.0.0"],
  ["1.10.1", "4.0.0"],
  ["1.11.0", "5.0.0"],
  ["1.12.0", "6.0.0"],
  ["1.12.1", "6.0.0"],
  ["1.13.0", "8.0.0"],
  ["1.13.1", "8.0.0"],
  ["1.13.2", "8.0.0"],
  ["1.14.0", "8.0.0"],
  ["1.14.1", "8.0.0"],
  ["1.14.2", "8.0.0"],
  ["1.14.3", "8.0.0"],
  ["1.14.4", "8.0.0"],
  ["1.15.0", "9.0.0"],
  ["1.15.1", "9.0.0"],
  ["1.16.0", "10.0.0"],
  ["1.16.1", "10.0.0"],
]);

/** The Firecracker releases whose snapshot format this package knows, oldest first. */
export const KNOWN_FIRECRACKER_RELEASES: readonly string[] = [...SNAPSHOT_FORMAT_BY_RELEASE.keys()];

const versionSchema = z.string().trim().min(1).max(200);

/**
 * "1.14.2" from "v1.14.2", "Firecracker v1.14.2" or "1.14.2"; a pre-release or build suffix is kept
 * ("1.16.0-dev"), because a development build's format is not its release's.
 */
export function normalizeFirecrackerVersion(version: string): string | undefined {
  const match = /(?:^|\s|v)(\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?)\s*$/.exec(version.trim());
  return match?.[1];
}

/** The snapshot data format a Firecracker release writes and loads ("8.0.0"), or undefined when unknown. */
export function snapshotFormatVersion(firecrackerVersion: string): string | undefined {
  const normalized = normalizeFirecrackerVersion(firecrackerVersion);
  return normalized === undefined ? undefined : SNAPSHOT_FORMAT_BY_RELEASE.get(normalized);
}

function formatLoads(snapshot: string, running: string): boolean {
  const [snapshotMajor, snapshotMinor] = snapshot.split(".").map(Number);
  const [runningMajor, runningMinor] = running.split(".").map(Number);
  return snapshotMajor === runningMajor && (snapshotMinor ?? 0) <= (runningMinor ?? 0);
}

/**
 * Throws SNAPSHOT_VERSION_INCOMPATIBLE, naming both versions, unless the running Firecracker can load
 * a snapshot the other one wrote. The same version always can; otherwise both must be releases whose
 * format is known (see KNOWN_FIRECRACKER_RELEASES), so an unknown or "unknown" version is refused
 * rather than guessed. Call it at resume, with the version recorded at build and `firecracker --version`.
 */
export function assertSnapshotLoadable(versions: {
  snapshotFirecrackerVersion: string;
  runningFirecrackerVersion: string;
}): void {
  const snapshot = versionSchema.parse(versions.snapshotFirecrackerVersion);
  const running = versionSchema.parse(versions.runningFirecrackerVersion);
  const snapshotRelease = normalizeFirecrackerVersion(snapshot);
  const runningRelease = normalizeFirecrackerVersion(running);
  if (snapshotRelease !== undefined && snapshotRelease === runningRelease) return;
  const snapshotFormat = snapshotRelease && SNAPSHOT_FORMAT_BY_RELEASE.get(snapshotRelease);
  const runningFormat = runningRelease && SNAPSHOT_FORMAT_BY_RELEASE.get(runningRelease);
  const refuse = (why: string): never => {
    throw new CpuTemplateError(
      "SNAPSHOT_VERSION_INCOMPATIBLE",
      `a snapshot made by Firecracker ${snapshot} cannot be loaded by Firecracker ${running}: ${why}`,
    );
  };
  if (!snapshotFormat || !runningFormat) {
    const unknown = [!snapshotFormat && snapshot, !runningFormat && running].filter(Boolean).join(" and ");
    refuse(
      `the snapshot format of ${unknown} is not known here (known: Firecracker ${KNOWN_FIRECRACKER_RELEASES[0]} to ${KNOWN_FIRECRACKER_RELEASES.at(-1)}); resume with the Firecracker the snapshot was made by`,
    );
  }
  if (!formatLoads(snapshotFormat as string, runningFormat as string))
    refuse(
      `the snapshot's format ${snapshotFormat} is not loadable by format ${runningFormat} (same major version, minor no newer, needed); resume with Firecracker ${snapshot} or rebuild the template`,
    );
}
