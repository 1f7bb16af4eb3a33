import { readFileSync } from "node:fs";
import { type Arch, hostArch } from "@sbx/arch";
import { staticTemplate } from "./catalog.ts";
import { CpuTemplateError } from "./errors.ts";
import { type CpuTemplate, parseCpuTemplate, templateArch } from "./schema.ts";

export type TemplateChoice =
  | { kind: "none" }
  | { kind: "static"; name: string }
  | { kind: "custom"; path: string; template: CpuTemplate };

/**
 * FC_CPU_TEMPLATE (a static name; empty or "None" means none) or FC_CUSTOM_CPU_TEMPLATE_PATH (a custom
 * template file, validated); both set is an error; a template for the other arch is refused.
 */
export function templateFromEnv(
  env: Record<string, string | undefined> = process.env,
  arch: Arch = hostArch(),
): TemplateChoice {
  const name = env.FC_CPU_TEMPLATE?.trim() ?? "";
  const path = env.FC_CUSTOM_CPU_TEMPLATE_PATH?.trim() ?? "";
  const wantsStatic = name !== "" && name !== "None";
  if (wantsStatic && path)
    throw new CpuTemplateError(
      "CONFLICTING_ENV",
      "both FC_CPU_TEMPLATE and FC_CUSTOM_CPU_TEMPLATE_PATH are set; choose one (Firecracker applies exactly one template)",
    );
  if (wantsStatic) {
    const known = staticTemplate(name);
    if (!known)
      throw new CpuTemplateError(
        "INVALID_TEMPLATE",
        `FC_CPU_TEMPLATE=${name} is not a static template (C3, T2, T2S, T2CL, T2A, V1N1, or None)`,
      );
    if (known.arch !== arch)
      throw new CpuTemplateError(
        "WRONG_ARCH",
        `FC_CPU_TEMPLATE=${name} is for ${known.arch} hosts; this one is ${arch}`,
      );
    return { kind: "static", name };
  }
  if (path) {
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
    const template = parseCpuTemplate(json);
    const forArch = templateArch(template);
    if (forArch && forArch !== arch)
      throw new CpuTemplateError("WRONG_ARCH", `${path} is a ${forArch} template; this host is ${arch}`);
    return { kind: "custom", path, template };
  }
  return { kind: "none" };
}
