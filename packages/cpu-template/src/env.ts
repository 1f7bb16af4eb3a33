import { readFileSync } from "node:fs";
import { type Arch, hostArch } from "@sbx/arch";
import type { StaticTemplate } from "./catalog.ts";
import { CpuTemplateError } from "./errors.ts";
import { type CustomCpuTemplate, parseCustomCpuTemplate, templateArch } from "./schema.ts";
import { parseCpuTemplateSetting } from "./template-setting.ts";

/** The CPU template `templateFromEnv` chose: none, a static one (with its deprecation warning), or a custom file. */
export type TemplateChoice =
  | { kind: "none" }
  | { kind: "static"; name: StaticTemplate["name"]; deprecation: string }
  | { kind: "custom"; path: string; template: CustomCpuTemplate };

/**
 * FC_CPU_TEMPLATE (a static name, any case; empty or "None" means none) or FC_CUSTOM_CPU_TEMPLATE_PATH
 * (a custom template file, validated); both set is an error; a template for the other arch is refused.
 * Parsed by parseCpuTemplateSetting, as the orchestrator's config is.
 */
export function templateFromEnv(
  env: Record<string, string | undefined> = process.env,
  arch: Arch = hostArch(),
): TemplateChoice {
  const setting = parseCpuTemplateSetting(
    { cpuTemplate: env.FC_CPU_TEMPLATE, customCpuTemplatePath: env.FC_CUSTOM_CPU_TEMPLATE_PATH },
    arch,
  );
  if (setting.kind === "static")
    return { kind: "static", name: setting.name, deprecation: setting.deprecation };
  if (setting.kind === "custom") {
    const { path } = setting;
    let json: unknown;
    try {
      json = JSON.parse(readFileSync(path, "utf8"));
    } catch (cause) {
      throw new CpuTemplateError(
        "INVALID_TEMPLATE",
        `FC_CUSTOM_CPU_TEMPLATE_PATH=${path} is not readable JSON`,
        { cause },
      );
    }
    const template = parseCustomCpuTemplate(json);
    const forArch = templateArch(template);
    if (forArch && forArch !== arch)
      throw new CpuTemplateError("WRONG_ARCH", `${path} is a ${forArch} template; this host is ${arch}`);
    return { kind: "custom", path, template };
  }
  return { kind: "none" };
}
