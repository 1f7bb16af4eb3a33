import { describe, expect, it } from "vitest";
import type { Logger } from "./logger.ts";
import {
  archTraits,
  isStaticCpuTemplateName,
  STATIC_CPU_TEMPLATE_NAMES,
  staticCpuTemplateArch,
} from "./traits.ts";

describe("archTraits", () => {
  it("describes amd64", () => {
    const traits = archTraits("amd64");
    expect(traits).toMatchObject({
      unameMachine: "x86_64",
      goArch: "amd64",
      ociPlatform: { os: "linux", architecture: "amd64" },
      elfMachine: 62,
      smtSupported: true,
      kernelImageFormat: "elf",
    });
    expect(traits.ociPlatform.variant).toBeUndefined();
  });

  it("describes arm64", () => {
    expect(archTraits("arm64")).toMatchObject({
      unameMachine: "aarch64",
      goArch: "arm64",
      ociPlatform: { os: "linux", architecture: "arm64", variant: "v8" },
      elfMachine: 183,
      smtSupported: false,
      kernelImageFormat: "arm64-image",
    });
  });
});

describe("firecrackerArgs", () => {
  it("adds nothing on amd64, even for a UFFD restore", () => {
    expect(archTraits("amd64").firecrackerArgs({ uffdRestore: true })).toEqual([]);
    expect(archTraits("amd64").firecrackerArgs({ uffdRestore: true, allowNoSeccomp: true })).toEqual([]);
  });

  it("passes a caller's compiled filter on either arch", () => {
    for (const arch of ["amd64", "arm64"] as const) {
      expect(archTraits(arch).firecrackerArgs({ uffdRestore: true, seccompFilter: "/etc/fc.bpf" })).toEqual([
        "--seccomp-filter",
        "/etc/fc.bpf",
      ]);
    }
  });

  it("adds nothing on arm64 when there is no UFFD restore", () => {
    expect(archTraits("arm64").firecrackerArgs({ uffdRestore: false })).toEqual([]);
  });

  it("refuses to choose for the caller on an arm64 UFFD restore", () => {
    expect(() => archTraits("arm64").firecrackerArgs({ uffdRestore: true })).toThrowError(
      expect.objectContaining({ code: "SECCOMP_CHOICE_REQUIRED" }),
    );
  });

  it("turns seccomp off on arm64 only when allowed, with one warning", () => {
    const warnings: string[] = [];
    const logger: Logger = { warn: (_fields, message) => warnings.push(message) };
    expect(archTraits("arm64").firecrackerArgs({ uffdRestore: true, allowNoSeccomp: true, logger })).toEqual([
      "--no-seccomp",
    ]);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain("seccomp");
  });
});

describe("static CPU templates", () => {
  it("each arch lists the templates its Firecracker accepts, and no name is on two arches", () => {
    expect(archTraits("amd64").staticCpuTemplates).toEqual(["C3", "T2", "T2S", "T2CL", "T2A"]);
    expect(archTraits("arm64").staticCpuTemplates).toEqual(["V1N1"]);
    expect(new Set(STATIC_CPU_TEMPLATE_NAMES).size).toBe(STATIC_CPU_TEMPLATE_NAMES.length);
    expect(STATIC_CPU_TEMPLATE_NAMES).toHaveLength(6);
  });

  it("maps a name to its arch and recognizes only exact spellings", () => {
    expect(staticCpuTemplateArch("T2CL")).toBe("amd64");
    expect(staticCpuTemplateArch("V1N1")).toBe("arm64");
    expect(isStaticCpuTemplateName("T2S")).toBe(true);
    expect(isStaticCpuTemplateName("t2s")).toBe(false);
    expect(isStaticCpuTemplateName("None")).toBe(false);
    expect(isStaticCpuTemplateName("constructor")).toBe(false);
    expect(isStaticCpuTemplateName(3)).toBe(false);
  });
});
