import { archSchema } from "@sbx/arch";
import { z } from "zod";

const sha256 = z.string().regex(/^[0-9a-f]{64}$/, "a sha256 digest is 64 lower-case hex digits");
const fileName = z
  .string()
  .min(1)
  .refine((s) => !s.includes("/") && s !== "." && s !== "..", {
    message: "must be a file name inside the template",
  });

export const cpuTemplateRecordSchema = z.discriminatedUnion("kind", [
  z.object({ kind: z.literal("none") }),
  z.object({ kind: z.literal("static"), name: z.string().min(1) }),
  z.object({ kind: z.literal("custom"), path: z.string().min(1), sha256 }),
]);
export type CpuTemplateRecord = z.infer<typeof cpuTemplateRecordSchema>;

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
  /** null when the template is not provisioned. */
  provisionScriptSha256: sha256.nullable(),
});
export type BootParameters = z.infer<typeof bootParametersSchema>;

export const templateFileSchema = z.object({
  file: fileName,
  sizeBytes: z.number().int().nonnegative(),
  sha256,
});

/** template.json: written last, atomically, when a template is published. */
export const templateManifestSchema = z.object({
  schemaVersion: z.literal(1),
  name: z.string().min(1),
  createdAt: z.iso.datetime(),
  boot: bootParametersSchema,
  /** The build host's CPU fingerprint; opaque here, interpreted by @sbx/cpu-template. */
  hostFingerprint: z.record(z.string(), z.unknown()),
  rootfs: templateFileSchema,
  snapshot: z.object({
    vmstate: templateFileSchema,
    memory: templateFileSchema,
  }),
  /** The TAP the snapshot reopens by name; every sandbox's namespace must have it. */
  network: z.object({ tapName: z.string().min(1).max(15), guestMac: z.string() }).optional(),
});
export type TemplateManifest = z.infer<typeof templateManifestSchema>;
