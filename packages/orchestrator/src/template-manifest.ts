import { archSchema, STATIC_CPU_TEMPLATE_NAMES } from "@sbx/arch";
import { z } from "zod";

const sha256 = z.string().regex(/^[0-9a-f]{64}$/, "a sha256 digest is 64 lower-case hex digits");
/** The one rule for template names: they name pointer files, so they are safe as file names. */
export const templateName = z
  .string()
  .regex(
    /^[a-z0-9][a-z0-9._-]{0,63}$/,
    "a template name is 1-64 of a-z 0-9 . _ - and starts with a letter or digit",
  );

export const cpuTemplateRecordSchema = z.discriminatedUnion("kind", [
  z.object({ kind: z.literal("none") }),
  z.object({ kind: z.literal("static"), name: z.enum([...STATIC_CPU_TEMPLATE_NAMES]) }),
  z.object({ kind: z.literal("custom"), path: z.string().min(1), sha256 }),
]);
export type CpuTemplateRecord = z.infer<typeof cpuTemplateRecordSchema>;

/**
 * A virtio balloon that stays deflated: with free page reporting the guest's kernel (PAGE_REPORTING)
 * reports freed memory and Firecracker madvise(MADV_DONTNEED)s it, so idle guests give memory back.
 * Free page hinting is not offered: upstream marks it a developer preview whose guest can reuse a page
 * before Firecracker frees it, which with UFFD-served memory loses the guest's write.
 */
export const balloonSettingsSchema = z.object({
  freePageReporting: z.boolean(),
  /** Seconds between the guest's memory statistics (0: none); Firecracker can only enable them at boot. */
  statsPollingIntervalS: z.number().int().min(0).max(3600),
});
export type BalloonSettings = z.infer<typeof balloonSettingsSchema>;

/**
 * Everything that decides what a template's VM is. Built by `resolveBootParameters`, stored in
 * template.json, and recomputed by the drift check with the same function.
 */
export const bootParametersSchema = z.object({
  arch: archSchema,
  firecracker: z.object({ version: z.string().min(1), sha256 }),
  kernel: z.object({ path: z.string().min(1), sha256 }),
  kernelCommandLine: z.string(),
  vcpuCount: z.number().int().min(1).max(32),
  memoryMib: z.number().int().min(16),
  smt: z.boolean(),
  hugePages: z.enum(["None", "2M"]),
  cpuTemplate: cpuTemplateRecordSchema,
  ociManifestDigest: z.string().regex(/^sha256:[0-9a-f]{64}$/, "an OCI digest is sha256:<64 hex digits>"),
  busybox: z.object({ version: z.string().min(1), sha256 }),
  initScriptSha256: sha256,
  /** Every guest file sbx generates (init, library, runners, agent), the build clock left out. */
  guestFilesSha256: sha256.nullable(),
  /** How the ext4 image is made. */
  ext4: z.object({ size: z.string(), label: z.string() }),
  /** The @sbx/orchestrator version that built it: its guest files and build steps. */
  sbxVersion: z.string().min(1),
  /** null when the template is not provisioned. */
  provisionScriptSha256: sha256.nullable(),
  /** Absent: no balloon device (and builds from before balloons existed). */
  balloon: balloonSettingsSchema.optional(),
});
export type BootParameters = z.infer<typeof bootParametersSchema>;

/** A ULID: 48 bits of milliseconds and 80 random bits in Crockford base32, so ids sort by creation. */
export const buildIdSchema = z
  .string()
  .regex(/^[0-9A-HJKMNP-TV-Z]{26}$/, "a build id is a 26-character ULID");

const buildFileSchema = z.object({ sizeBytes: z.number().int().nonnegative(), sha256 });

/** The files of a build, by their fixed names inside `builds/{id}/`. */
export const BUILD_FILES = Object.freeze({
  manifest: "build.json",
  vmstate: "vmstate",
  memory: "memory",
  header: "memory.header",
  rootfs: "rootfs.ext4",
  /** A copy of the custom CPU template the guest was booted with: resume never rereads the original. */
  cpuTemplate: "cpu-template.json",
  /**
   * The pages a fresh restore touched before its guest was alive, in first-touch order (@sbx/uffd's
   * working-set format): prefetched by every create. Optional: a build without one restores on demand.
   */
  workingSet: "working-set",
});

/**
 * build.json: written last, atomically, inside the staging directory before it is renamed into place.
 * Template builds and pauses are both builds; a pause's parent is the build its sandbox ran from.
 */
export const buildManifestSchema = z.object({
  schemaVersion: z.literal(1),
  id: buildIdSchema,
  kind: z.enum(["template", "pause"]),
  parent: buildIdSchema.optional(),
  /** The template (name) this build descends from. */
  template: templateName,
  createdAt: z.iso.datetime(),
  arch: archSchema,
  /** The Firecracker that wrote the snapshot: its format is what a resume must be able to load. */
  firecrackerVersion: z.string().min(1),
  /** Whether the VM that wrote the snapshot ran under the jailer (absent on builds from before it). */
  jailed: z.boolean().optional(),
  /** Present on builds made from an image by `buildTemplate` (a pause copies its parent's). */
  boot: bootParametersSchema.optional(),
  /** The CPU the guest was told about (the template build host's); opaque here, read by @sbx/cpu-template. */
  hostFingerprint: z.record(z.string(), z.unknown()),
  /** The TAP the snapshot reopens by name; every sandbox's namespace must have it. */
  network: z.object({ tapName: z.string().min(1).max(15), guestMac: z.string() }).optional(),
  /** The template's egress policy (as given; combined with the config's and each create's). */
  egress: z.record(z.string(), z.unknown()).optional(),
  memory: z.object({
    /** Guest memory size (the header covers exactly this). */
    sizeBytes: z.number().int().positive(),
    /** Bytes this build's own memory file holds, by its header: what a pause wrote. */
    ownedBytes: z.number().int().nonnegative(),
  }),
  files: z.object({
    [BUILD_FILES.vmstate]: buildFileSchema,
    [BUILD_FILES.memory]: buildFileSchema,
    [BUILD_FILES.header]: buildFileSchema,
    [BUILD_FILES.rootfs]: buildFileSchema.optional(),
    [BUILD_FILES.cpuTemplate]: buildFileSchema.optional(),
    [BUILD_FILES.workingSet]: buildFileSchema.optional(),
  }),
});
/** `build.json`: a build's Firecracker version, boot parameters, memory, files with sizes and digests, and host. */
export type BuildManifest = z.infer<typeof buildManifestSchema>;
