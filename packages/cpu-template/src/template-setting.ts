// The one parser of the CPU template settings (FC_CPU_TEMPLATE / FC_CUSTOM_CPU_TEMPLATE_PATH, or the
// same values from a config file): templateFromEnv and the orchestrator's config both go through it,
// so a value means the same thing wherever it is read.
import type { Arch } from "@sbx/arch";
import { z } from "zod";
import { STATIC_TEMPLATES, type StaticTemplate } from "./catalog.ts";
import { CpuTemplateError } from "./errors.ts";

/** A parsed CPU template setting: none, a static template, or a custom template's path. */
export type CpuTemplateSetting =
  | { kind: "none" }
  | {
      kind: "static";
      name: StaticTemplate["name"];
      template: StaticTemplate;
      /** Firecracker deprecated static templates: log this, it names the custom replacement. */
      deprecation: string;
    }
  | { kind: "custom"; path: string };

const settingSchema = z.strictObject({
  cpuTemplate: z.string().optional(),
  customCpuTemplatePath: z.string().optional(),
});
/** The CPU template settings as given (`cpuTemplate`, `customCpuTemplatePath`). */
export type CpuTemplateSettingInput = z.input<typeof settingSchema>;

const names = () => [...STATIC_TEMPLATES.map((t) => t.name), "None"].join(", ");

/** The warning a static template deserves: deprecated upstream since v1.5, with its custom form named. */
export function staticTemplateDeprecation(template: StaticTemplate): string {
  return (
    `the static CPU template ${template.name} is deprecated by Firecracker (since v1.5, in favour of custom ` +
    `CPU templates): set FC_CUSTOM_CPU_TEMPLATE_PATH to its custom form ${template.customFile} ` +
    `(tests/data/custom_cpu_templates/${template.customFile} in Firecracker's repository) and unset FC_CPU_TEMPLATE`
  );
}

/**
 * Parses a static template name (case-insensitive; empty or "none" means none) and a custom template
 * path; exactly one template may be set. Throws CpuTemplateError: CONFLICTING_ENV when both are set,
 * INVALID_TEMPLATE for an unknown name, WRONG_ARCH for a static template of the other arch. A custom
 * template's file is not read here (templateFromEnv reads and validates it).
 */
export function parseCpuTemplateSetting(input: CpuTemplateSettingInput, arch: Arch): CpuTemplateSetting {
  const parsed = settingSchema.safeParse(input);
  if (!parsed.success)
    throw new CpuTemplateError("INVALID_TEMPLATE", `CPU template setting: ${z.prettifyError(parsed.error)}`);
  const name = parsed.data.cpuTemplate?.trim() ?? "";
  const path = parsed.data.customCpuTemplatePath?.trim() ?? "";
  const wantsStatic = name !== "" && name.toLowerCase() !== "none";
  if (wantsStatic && path)
    throw new CpuTemplateError(
      "CONFLICTING_ENV",
      `both FC_CPU_TEMPLATE=${name} and FC_CUSTOM_CPU_TEMPLATE_PATH=${path} are set; choose one (Firecracker applies exactly one template)`,
    );
  if (path) return { kind: "custom", path };
  if (!wantsStatic) return { kind: "none" };
  const template = STATIC_TEMPLATES.find((t) => t.name.toLowerCase() === name.toLowerCase());
  if (!template)
    throw new CpuTemplateError(
      "INVALID_TEMPLATE",
      `FC_CPU_TEMPLATE=${name} is not a static template (${names()}); for anything else use FC_CUSTOM_CPU_TEMPLATE_PATH`,
    );
  if (template.arch !== arch)
    throw new CpuTemplateError(
      "WRONG_ARCH",
      `FC_CPU_TEMPLATE=${name} is for ${template.arch} hosts; this one is ${arch}`,
    );
  return { kind: "static", name: template.name, template, deprecation: staticTemplateDeprecation(template) };
}
