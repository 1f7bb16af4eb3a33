// The public surface: what a user composes and what a fork replaces step by step. Everything else is
// internal; tests import the source files they need directly.
export {
  type ArtifactResolver,
  artifactResolverWith,
  assertCanRunFirecracker,
  defaultArtifactResolver,
  resolveBootParameters,
  resolveFirecrackerBinary,
} from "./boot-parameters.ts";
export type { PausedSandbox, TemplatePointer } from "./builds.ts";
export {
  CONFIG_DEFAULTS,
  CONFIG_ENV_VARIABLES,
  configFromEnv,
  createConfig,
  type OrchestratorConfig,
  type OrchestratorOptions,
  orchestratorOptionsSchema,
} from "./config.ts";
export { type DoctorCheck, runDoctor } from "./doctor.ts";
export type { EgressPolicy, EgressPolicyInput } from "./egress-policy.ts";
export { OrchestratorError, type OrchestratorErrorCode } from "./errors.ts";
export { type ImportBuildOptions, importBuild } from "./import-build.ts";
export { type LaunchMode, launchModeFor } from "./jail-plan.ts";
export { type OpenOrchestratorOptions, Orchestrator } from "./orchestrator.ts";
export { type OrchestratorState, openOrchestratorState } from "./orchestrator-state.ts";
export { defaultPauseSteps, type PauseOptions } from "./pause.ts";
export {
  type CreateSandboxHooks,
  type CreateSandboxOptions,
  createSandbox,
  defaultSandboxSteps,
  type OrchestratorMetrics,
  Sandbox,
  type SandboxContext,
} from "./sandbox.ts";
export { setupCommandFor } from "./setup.ts";
export {
  requireFromStep,
  runSteps,
  type Step,
  type StepCleanup,
  type StepEvent,
  StepList,
} from "./steps.ts";
export {
  type BuildTemplateOptions,
  type BuiltTemplate,
  buildTemplate,
  defaultTemplateBuildSteps,
  type TemplateBuildContext,
} from "./template-build.ts";
export { templateDriftReason } from "./template-drift.ts";
export {
  parseTemplateRequest,
  resolveTemplateInputs,
  type TemplateInputs,
  type TemplateRequest,
} from "./template-inputs.ts";
export { BUILD_FILES, type BuildManifest } from "./template-manifest.ts";
export { type LaunchedVm, launchVm, type VmLaunchRequest } from "./vm-launch.ts";
