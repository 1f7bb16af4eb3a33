export { applyTemplate } from "./apply.ts";
export {
  applyBitmap,
  type Bitmap,
  bitmapValue,
  combineBitmaps,
  parseBitmap,
  serializeBitmap,
} from "./bitmap.ts";
export { type CpuName, cpuName, STATIC_TEMPLATES, type StaticTemplate, staticTemplate } from "./catalog.ts";
export { type CompatibilityVerdict, checkCompatibility, type MissingFeature } from "./compat.ts";
export { type TemplateChoice, templateFromEnv } from "./env.ts";
export { CpuTemplateError, type CpuTemplateErrorCode } from "./errors.ts";
export { ARM64_ID_REGISTERS, X86_FEATURE_REGISTERS } from "./features.ts";
export {
  type Fingerprint,
  type FingerprintFile,
  fingerprintFileSchema,
  fingerprintToFile,
  parseFingerprint,
  readFingerprintFile,
} from "./fingerprint.ts";
export { hostFingerprint } from "./host.ts";
export { normalizeFleet } from "./normalize.ts";
export { type Recommendation, recommendTemplate } from "./recommend.ts";
export {
  type CustomCpuTemplate,
  customCpuTemplateSchema,
  customCpuTemplateShapeSchema,
  parseCustomCpuTemplate,
  templateArch,
} from "./schema.ts";
export {
  assertSnapshotLoadable,
  KNOWN_FIRECRACKER_RELEASES,
  normalizeFirecrackerVersion,
  snapshotFormatVersion,
} from "./snapshot-version.ts";
export { readStaticTemplateCustomForm, staticTemplateNamed } from "./static-custom-form.ts";
export {
  type CpuTemplateSetting,
  type CpuTemplateSettingInput,
  parseCpuTemplateSetting,
  staticTemplateDeprecation,
} from "./template-setting.ts";
