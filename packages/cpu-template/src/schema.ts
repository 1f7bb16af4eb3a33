// Custom CPU templates. Two layers: `customCpuTemplateShapeSchema` mirrors Firecracker's own JSON schema
// (types only; a test checks it accepts and rejects what ajv with schema.json does), and
// `parseCustomCpuTemplate` adds what Firecracker's parser enforces beyond that schema: bitmap formats and
// widths, integer strings, no unknown fields.
import { z } from "zod";
import { parseBitmap } from "./bitmap.ts";
import { CpuTemplateError } from "./errors.ts";

const cpuidRegisterModifier = z.looseObject({
  register: z.enum(["eax", "ebx", "ecx", "edx"]).optional(),
  bitmap: z.string().optional(),
});
/** Exactly what Firecracker's custom CPU template `schema.json` checks (types only). */
export const customCpuTemplateShapeSchema = z.looseObject({
  kvm_capabilities: z.array(z.string()).optional(),
  vcpu_features: z
    .array(z.looseObject({ index: z.int().optional(), bitmap: z.string().optional() }))
    .optional(),
  cpuid_modifiers: z
    .array(
      z.looseObject({
        leaf: z.string().optional(),
        subleaf: z.string().optional(),
        flags: z.int().optional(),
        modifiers: z.array(cpuidRegisterModifier).optional(),
      }),
    )
    .optional(),
  msr_modifiers: z
    .array(z.looseObject({ addr: z.string().optional(), bitmap: z.string().optional() }))
    .optional(),
  reg_modifiers: z
    .array(z.looseObject({ addr: z.string().optional(), bitmap: z.string().optional() }))
    .optional(),
});

const integerString = z
  .string()
  .regex(/^(0x[0-9a-fA-F]+|0b[01]+|\d+)$/, "an integer string (decimal, 0x or 0b)");
const bitmapOf = (width: number, exact: boolean) =>
  z.string().refine(
    (text) => {
      try {
        const parsed = parseBitmap(text, width);
        return !exact || parsed.width === width;
      } catch {
        return false;
      }
    },
    exact ? `a 0b[01x] bitmap of exactly ${width} bits` : `a 0b[01x] bitmap of 1 to ${width} bits`,
  );

/** A custom CPU template as Firecracker's parser takes it: bitmap widths, integer strings, no unknown fields. */
export const customCpuTemplateSchema = z.strictObject({
  kvm_capabilities: z
    .array(z.string().regex(/^!?\d+$/, "a KVM capability number, optionally prefixed with !"))
    .optional(),
  vcpu_features: z
    .array(z.strictObject({ index: z.int().nonnegative(), bitmap: bitmapOf(32, false) }))
    .optional(),
  cpuid_modifiers: z
    .array(
      z.strictObject({
        leaf: integerString,
        subleaf: integerString,
        flags: z.int().nonnegative(),
        modifiers: z.array(
          z.strictObject({ register: z.enum(["eax", "ebx", "ecx", "edx"]), bitmap: bitmapOf(32, true) }),
        ),
      }),
    )
    .optional(),
  msr_modifiers: z.array(z.strictObject({ addr: integerString, bitmap: bitmapOf(64, true) })).optional(),
  reg_modifiers: z.array(z.strictObject({ addr: integerString, bitmap: bitmapOf(128, false) })).optional(),
});
/** A custom CPU template (`PUT /cpu-config`), validated. */
export type CustomCpuTemplate = z.infer<typeof customCpuTemplateSchema>;

/** Validates a custom template as Firecracker's parser would; the error lists every problem with its path. */
export function parseCustomCpuTemplate(json: unknown): CustomCpuTemplate {
  const parsed = customCpuTemplateSchema.safeParse(json);
  if (!parsed.success)
    throw new CpuTemplateError(
      "INVALID_TEMPLATE",
      `invalid custom CPU template: ${z.prettifyError(parsed.error)}`,
      {
        cause: parsed.error,
      },
    );
  const t = parsed.data;
  const x86 = (t.cpuid_modifiers?.length ?? 0) + (t.msr_modifiers?.length ?? 0) > 0;
  const arm = (t.reg_modifiers?.length ?? 0) + (t.vcpu_features?.length ?? 0) > 0;
  if (x86 && arm)
    throw new CpuTemplateError(
      "INVALID_TEMPLATE",
      "a template has either x86_64 (cpuid/msr) or aarch64 (reg/vcpu) modifiers, not both",
    );
  return t;
}

/** The arch a template is for, from its modifiers; undefined when it has none of either. */
export function templateArch(template: CustomCpuTemplate): "amd64" | "arm64" | undefined {
  if ((template.cpuid_modifiers?.length ?? 0) + (template.msr_modifiers?.length ?? 0) > 0) return "amd64";
  if ((template.reg_modifiers?.length ?? 0) + (template.vcpu_features?.length ?? 0) > 0) return "arm64";
  return undefined;
}
