export { AddressPool, type SandboxAddresses } from "./address-pool.ts";
export {
  type ArtifactResolver,
  artifactResolverWith,
  assertCanRunFirecracker,
  type BootArtifacts,
  DEFAULT_KERNEL_COMMAND_LINE,
  defaultArtifactResolver,
  firecrackerVersionOf,
  resolveBootParameters,
  resolveBusyboxArtifact,
  resolveFirecrackerBinary,
  resolveKernel,
  type TemplateSpec,
  templateSpecSchema,
} from "./boot-parameters.ts";
export {
  BuildLeases,
  buildDir,
  buildsDir,
  collectGarbage,
  type GcReport,
  listPausedSandboxes,
  listTemplatePointers,
  memoryFilesOf,
  newBuildId,
  type PausedSandbox,
  pausedDir,
  pausedSandboxSchema,
  publishBuild,
  readBuild,
  readBuildHeader,
  readTemplatePointer,
  removePausedSandbox,
  removeTemplatePointer,
  setPausedPointer,
  setTemplatePointer,
  stageBuild,
  type TemplatePointer,
  templatesDir,
} from "./builds.ts";
export {
  AdmissionController,
  type AdmissionOptions,
  type CapacityDemand,
  type CapacityLimits,
  type CapacityResource,
  type CapacitySnapshot,
  defaultReservedMemoryBytes,
  demandOf,
  describeCapacity,
  type HostResources,
  type Reservation,
  type ResolvedCapacity,
  readHostResources,
  resolveCapacity,
} from "./capacity.ts";
export {
  ADMISSION_MODES,
  type AdmissionMode,
  ARCH_DEFAULTS,
  CONFIG_DEFAULTS,
  CONFIG_ENV_VARIABLES,
  type ConfigIssue,
  type CpuTemplateChoice,
  configFromEnv,
  createConfig,
  DEFAULT_BUSYBOX_VERSION,
  type OrchestratorConfig,
  type OrchestratorOptions,
  orchestratorOptionsSchema,
  type StaticCpuTemplate,
} from "./config.ts";
export {
  type ControlRequest,
  controlRequest,
  controlRequestSchema,
  controlServerRunning,
  controlSocketPath,
  type SandboxSummary,
  serveControl,
} from "./control.ts";
export { type CloneMethod, cloneFile, directoryClones } from "./disk-clone.ts";
export {
  type DockerConfig,
  type DockerCredentialOptions,
  dockerConfigSchema,
  dockerCredentialOptionsFromEnv,
  dockerCredentialsFor,
  dockerCredentialsFromEnv,
  normalizeRegistryKey,
  readDockerConfig,
} from "./docker-config.ts";
export {
  type DoctorCheck,
  type DoctorHost,
  type DoctorStatus,
  defaultDoctorHost,
  formatDoctorReport,
  runDoctor,
} from "./doctor.ts";
export {
  createDispatcher,
  type DownloadProgress,
  downloadResumable,
  type ProxySettings,
  proxySettingsFromEnv,
  proxySettingsSchema,
} from "./download.ts";
export {
  DEFAULT_DENIED_RANGES,
  DEFAULT_EGRESS_POLICY,
  type EgressPolicy,
  type EgressPolicyInput,
  egressPolicySchema,
  parseEgressPolicy,
  resolveEgressPolicy,
} from "./egress-policy.ts";
export { OrchestratorError, type OrchestratorErrorCode } from "./errors.ts";
export { guestResolvers, hostResolvers } from "./host-resolvers.ts";
export {
  type ImageSource,
  type ImageSourceOptions,
  isImageReference,
  parsePlatformOverride,
  resolveImageSource,
} from "./image-source.ts";
export { type ImportBuildOptions, importBuild } from "./import-build.ts";
export { ConcurrencyLimiter } from "./limiter.ts";
export {
  type ProcessMemory,
  parseProcessMemory,
  readProcessMemory,
  type SandboxMemoryStats,
  sandboxMemoryStats,
} from "./memory-stats.ts";
export { NetworkPool, type NetworkPoolStats } from "./netns-pool.ts";
export {
  createNetworkNamespace,
  listLinks,
  listNetworkNamespaces,
  NAMESPACE_VETH_NAME,
  NetworkNamespace,
  type NetworkNamespaceOptions,
  type NetworkNamespaceRef,
  networkNamesFor,
  teardownNetworkNamespace,
} from "./network.ts";
export { DEFAULT_FIREWALL_TABLE, deleteHostFirewall, listHostFirewall } from "./nftables.ts";
export {
  type OpenOrchestratorOptions,
  Orchestrator,
  type OrchestratorMetricsWithCapacity,
} from "./orchestrator.ts";
export { type OrchestratorState, openOrchestratorState } from "./orchestrator-state.ts";
export { defaultPauseSteps, type PauseOptions } from "./pause.ts";
export {
  checkProcessIdentity,
  type IdentityCheck,
  type ProcessIdentity,
  processIdentity,
  processIdentitySchema,
  type TerminateResult,
  terminateRecordedProcess,
} from "./process-identity.ts";
export {
  createProgressReporter,
  formatBytes,
  type ProgressEvent,
  type ProgressLine,
  type ProgressMode,
  type ProgressPhase,
  type ProgressReporter,
  type ProgressReporterOptions,
  progressModeFor,
} from "./progress.ts";
export {
  type ReclaimedSandbox,
  type ReclaimOptions,
  type ReclaimReport,
  reclaim,
  reclaimSandbox,
} from "./reclaim.ts";
export {
  assertCanResume,
  type CreateSandboxHooks,
  type CreateSandboxOptions,
  createSandbox,
  DEFAULT_ALIVE,
  defaultSandboxSteps,
  type OrchestratorMetrics,
  Sandbox,
  type SandboxContext,
} from "./sandbox.ts";
export { newSandboxId, resolveIdPrefix, sandboxIdSchema } from "./sandbox-id.ts";
export { type ExposedPort, SandboxNetwork } from "./sandbox-network.ts";
export {
  allocateNetwork,
  networkStep,
  newSandboxCreateContext,
  type SandboxCreateContext,
  stateRecordStep,
  updateSandboxRecord,
} from "./sandbox-steps.ts";
export {
  ciVersionOf,
  DEFAULT_KERNEL_BUCKET_URL,
  DEFAULT_RELEASE_BASE_URL,
  type InstalledArtifact,
  newestKernel,
  releaseMembers,
  releaseTarballName,
  type SetupOptions,
  type SetupResult,
  type SetupRuntime,
  type SetupStatus,
  type SetupVerification,
  setupArtifacts,
  setupCommandFor,
  setupOptionsSchema,
} from "./setup.ts";
export {
  type InvalidRecord,
  type SandboxProcessRole,
  type SandboxRecord,
  StateDirectory,
  sandboxRecordSchema,
} from "./state-dir.ts";
export {
  type RunStepsOptions,
  requireFromStep,
  runSteps,
  type Step,
  type StepCleanup,
  type StepEvent,
  StepList,
  type StepRunOptions,
  type StepRunResult,
  type StepTiming,
} from "./steps.ts";
export {
  type BuildTemplateOptions,
  type BuiltTemplate,
  buildTemplate,
  defaultTemplateBuildSteps,
  diskSlotPath,
  ensureDiskSlot,
  GUEST_INTERFACE_ID,
  GUEST_MAC,
  ROOTFS_DRIVE_ID,
  readTemplate,
  type TemplateBuildContext,
  templateDrift,
  templateVmConfig,
} from "./template-build.ts";
export {
  type Difference,
  describeDifferences,
  diffBootParameters,
  type TemplateDriftOptions,
  templateDriftReason,
  verifyTemplateFiles,
} from "./template-drift.ts";
export {
  type ParsedTemplateRequest,
  parseTemplateRequest,
  resolveTemplateInputs,
  type TemplateInputs,
  type TemplateRequest,
  templateRequestSchema,
} from "./template-inputs.ts";
export {
  type BalloonSettings,
  type BootParameters,
  BUILD_FILES,
  type BuildManifest,
  balloonSettingsSchema,
  bootParametersSchema,
  buildIdSchema,
  buildManifestSchema,
  type CpuTemplateRecord,
  cpuTemplateRecordSchema,
  templateName,
} from "./template-manifest.ts";
export {
  type BindMount,
  type VmNamespaceOptions,
  type WrappedLaunch,
  wrapInVmNamespaces,
} from "./vm-namespace.ts";
export { type ConsoleWaiter, waitForConsoleLogged } from "./wait-for-line.ts";
export { RECORD_QUIET_MS, readWorkingSet, recordWorkingSet } from "./working-set-record.ts";
