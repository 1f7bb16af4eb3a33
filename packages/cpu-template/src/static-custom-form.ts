// A static CPU template (deprecated upstream, still accepted) in custom form, for checkCompatibility.
// Firecracker applies a static template itself, and what it masks is not something this package can
// derive: the catalog knows which CPUs Firecracker documents each template as safe on, and that is not
// a promise that snapshots move between them (C3 lets avx512_vbmi2 through, so an Ice Lake snapshot
// under C3 must not resume on Cascade Lake). The bit-exact custom forms are Firecracker's own files
// (tests/data/custom_cpu_templates/<NAME>.json in its repository, the catalog's `customFile`): this
// reads one from a directory the operator keeps them in, validated and checked against the catalog.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { STATIC_TEMPLATES, type StaticTemplate } from "./catalog.ts";
import { CpuTemplateError } from "./errors.ts";
import { type CustomCpuTemplate, parseCustomCpuTemplate, templateArch } from "./schema.ts";

/** The catalog entry for a static template name, any case; INVALID_TEMPLATE when there is none. */
export function staticTemplateNamed(name: string): StaticTemplate {
  const template = STATIC_TEMPLATES.find((t) => t.name.toLowerCase() === name.trim().toLowerCase());
  if (!template)
    throw new CpuTemplateError(
      "INVALID_TEMPLATE",
      `${name} is not a static CPU template (${STATIC_TEMPLATES.map((t) => t.name).join(", ")})`,
    );
  return template;
}

/** Custom forms are a few KiB; anything far larger is not one. */
const MAX_CUSTOM_FORM_BYTES = 1 << 20;

/**
 * What the static template `name` masks, as a custom template to pass to checkCompatibility: the
 * catalog's `customFile` read from `directory` (Firecracker's custom_cpu_templates files), validated
 * like any custom template and refused with WRONG_ARCH when it is not for the template's arch.
 * INVALID_TEMPLATE when the file is missing or invalid. Not for applying to a VM: Firecracker applies
 * the static template itself. Keep the result with the build, so a resume does not depend on the
 * directory still holding the same file.
 */
export function readStaticTemplateCustomForm(name: string, directory: string): CustomCpuTemplate {
  const template = staticTemplateNamed(name);
  const path = join(z.string().min(1).parse(directory), template.customFile);
  let json: unknown;
  try {
    const text = readFileSync(path);
    if (text.length > MAX_CUSTOM_FORM_BYTES) throw new Error(`${text.length} bytes is too large`);
    json = JSON.parse(text.toString("utf8"));
  } catch (cause) {
    throw new CpuTemplateError(
      "INVALID_TEMPLATE",
      `the custom form of the static CPU template ${template.name} could not be read from ${path} (${(cause as Error).message}); put Firecracker's tests/data/custom_cpu_templates/${template.customFile} there`,
      { cause },
    );
  }
  const custom = parseCustomCpuTemplate(json);
  const arch = templateArch(custom);
  if (arch !== template.arch)
    throw new CpuTemplateError(
      "WRONG_ARCH",
      `${path} is ${arch === undefined ? "a template without modifiers" : `a ${arch} template`}; the static CPU template ${template.name} is for ${template.arch}`,
    );
  return custom;
}
