export {
  type CgroupLimits,
  type CgroupMount,
  cgroupLimitFiles,
  chooseCgroupVersion,
  jailCgroupDirs,
  readCgroupMounts,
  removeCgroupDirs,
} from "./cgroups.ts";
export {
  type CallOptions,
  type CreateFirecrackerClientOptions,
  createFirecrackerClient,
  type FirecrackerClient,
  type FirecrackerClientBase,
  type FirecrackerExtensions,
  type FirecrackerOperations,
} from "./client.ts";
export { CONFIGURE_ORDER, type ConfigureAndStartOptions, configureAndStart } from "./configure.ts";
export {
  ConsoleCapture,
  type ConsoleLimits,
  type ConsoleLine,
  type ConsoleMatch,
  type WaitForConsoleOptions,
} from "./console-capture.ts";
export {
  FirecrackerApiError,
  type FirecrackerClientErrorCode,
  FirecrackerError,
  type FirecrackerErrorCode,
  FirecrackerLaunchError,
  type FirecrackerLaunchErrorCode,
  FirecrackerVersionError,
} from "./errors.ts";
export type { Jail, JailLaunchOptions } from "./jail.ts";
export {
  buildJailerArgs,
  type JailerCommand,
  type JailerOptions,
  jailedPaths,
  linkIntoJail,
} from "./jailer.ts";
export { type JailerAndFirecrackerVersions, readJailerAndFirecrackerVersions } from "./jailer-version.ts";
export {
  type FirecrackerExit,
  type FirecrackerProcess,
  type KillOptions,
  type LaunchFirecrackerOptions,
  launchFirecracker,
  validateVmConfigFile,
} from "./launcher.ts";
export {
  type FirecrackerMetrics,
  firecrackerMetricsSchema,
  type MetricsGroup,
  metricsGroupSchema,
  parseMetrics,
  parseMetricsLine,
  type ReadMetricsResult,
  readMetricsFile,
} from "./metrics.ts";
export { OPERATIONS, type OperationId, type OperationSpec, type Operations } from "./operations.ts";
export * from "./schemas.ts";
export { type RemovedJails, type RemoveStaleJailsOptions, removeStaleJails } from "./stale-jails.ts";
export {
  FIELD_SINCE,
  OLDEST_KNOWN_VERSION,
  OPERATION_SINCE,
  type ParsedVersion,
  parseFirecrackerVersion,
  SPEC_VERSIONS,
  type SpecVersion,
  versionAtLeast,
} from "./versions.ts";
export { type DialVsockOptions, dialVsock, type VsockConnection, vsockListenPath } from "./vsock.ts";
