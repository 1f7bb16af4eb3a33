import { SbxError } from "@sbx/arch";
import { expect, it } from "vitest";
import { CpuTemplateError } from "./errors.ts";

it("CpuTemplateError has details and an isInstance that a duplicated module does not defeat", async () => {
  const specifier = "./errors.ts?second-copy";
  const duplicate = (await import(specifier)) as typeof import("./errors.ts");
  const wrongArch = new duplicate.CpuTemplateError("WRONG_ARCH", "a arm64 template", {
    details: { arch: "arm64" },
  });
  expect(wrongArch instanceof CpuTemplateError).toBe(false);
  expect(CpuTemplateError.isInstance(wrongArch)).toBe(true);
  expect(wrongArch.details.arch).toBe("arm64");
  expect(CpuTemplateError.isInstance(new SbxError("WRONG_ARCH", "only the base class"))).toBe(false);
});
