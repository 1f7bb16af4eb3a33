import { archTraits, STATIC_CPU_TEMPLATE_NAMES } from "@sbx/arch";
import { describe, expect, it } from "vitest";
import { STATIC_TEMPLATES, staticTemplate } from "./catalog.ts";

describe("static template catalog", () => {
  it("describes exactly the names @sbx/arch lists, each under the arch whose traits list it", () => {
    expect(STATIC_TEMPLATES.map((t) => t.name).sort()).toEqual([...STATIC_CPU_TEMPLATE_NAMES].sort());
    for (const template of STATIC_TEMPLATES) {
      expect(archTraits(template.arch).staticCpuTemplates).toContain(template.name);
      expect(template.customFile).toBe(`${template.name}.json`);
    }
  });

  it("finds an entry by its exact name only", () => {
    expect(staticTemplate("V1N1")).toMatchObject({ arch: "arm64", vendor: "ARM" });
    expect(staticTemplate("v1n1")).toBeUndefined();
    expect(staticTemplate("constructor")).toBeUndefined();
  });
});
