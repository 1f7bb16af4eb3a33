// PROVISIONAL index (written by the launcher helper; the API-client helper owns this file).
export {
  type CallOptions,
  type CreateFirecrackerClientOptions,
  createFirecrackerClient,
  type FirecrackerClient,
} from "./client.ts";
export { CONFIGURE_ORDER, type ConfigureAndStartOptions, configureAndStart } from "./configure.ts";
export {
  ConsoleCapture,
  type ConsoleLimits,
  type ConsoleLine,
  type ConsoleMatch,
  type WaitForConsoleOptions,
} from "./console-capture.ts";
export { FirecrackerApiError } from "./errors.ts";
export {
  buildJailerArgs,
  type JailerCommand,
  type JailerOptions,
  jailedPaths,
  linkIntoJail,
} from "./jailer.ts";
export { FirecrackerLaunchError, type FirecrackerLaunchErrorCode } from "./launch-error.ts";
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
export * from "./schemas.ts";
export { type DialVsockOptions, dialVsock, type VsockConnection, vsockListenPath } from "./vsock.ts";
