import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { STATIC_TEMPLATES } from "./catalog.ts";
import { checkCompatibility } from "./compat.ts";
import { templateFromEnv } from "./env.ts";
import type { Fingerprint } from "./fingerprint.ts";
import { hostFingerprint } from "./host.ts";
import { parseCustomCpuTemplate } from "./schema.ts";
import {
  assertSnapshotLoadable,
  normalizeFirecrackerVersion,
  snapshotFormatVersion,
} from "./snapshot-version.ts";
import { readStaticTemplateCustomForm } from "./static-custom-form.ts";
import { parseCpuTemplateSetting } from "./template-setting.ts";
import { customTemplates, fingerprint, sharedSkipReason, TEMPLATES_DIR } from "./test-shared.ts";

const onShared = describe.skipIf(sharedSkipReason !== undefined);
const refusal = (code: string) => expect.objectContaining({ name: "CpuTemplateError", code });

describe("parseCpuTemplateSetting: the one FC_CPU_TEMPLATE parser", () => {
  it("takes any case, trims, and maps empty and none to no template", () => {
    for (const value of ["t2cl", "T2cl", " T2CL "])
      expect(parseCpuTemplateSetting({ cpuTemplate: value }, "amd64")).toMatchObject({
        kind: "static",
        name: "T2CL",
      });
    for (const value of [undefined, "", "  ", "None", "NONE", "none"])
      expect(parseCpuTemplateSetting({ cpuTemplate: value }, "amd64")).toEqual({ kind: "none" });
    expect(parseCpuTemplateSetting({ cpuTemplate: "v1n1" }, "arm64")).toMatchObject({ name: "V1N1" });
    expect(templateFromEnv({ FC_CPU_TEMPLATE: "t2cl" }, "amd64")).toMatchObject({
      kind: "static",
      name: "T2CL",
    });
  });

  it("names the custom-template replacement of every static template in a deprecation warning", () => {
    for (const template of STATIC_TEMPLATES) {
      const setting = parseCpuTemplateSetting({ cpuTemplate: template.name }, template.arch);
      if (setting.kind !== "static") throw new Error("expected a static template");
      expect(setting.deprecation).toContain(`static CPU template ${template.name} is deprecated`);
      expect(setting.deprecation).toContain(`custom_cpu_templates/${template.customFile}`);
      expect(setting.deprecation).toContain("FC_CUSTOM_CPU_TEMPLATE_PATH");
    }
    const fromEnv = templateFromEnv({ FC_CPU_TEMPLATE: "C3" }, "amd64");
    expect(fromEnv.kind === "static" && fromEnv.deprecation).toMatch(/C3\.json/);
  });

  it("refuses the other arch's template, unknown names and two templates, with typed errors", () => {
    expect(() => parseCpuTemplateSetting({ cpuTemplate: "t2cl" }, "arm64")).toThrow(refusal("WRONG_ARCH"));
    expect(() => parseCpuTemplateSetting({ cpuTemplate: "V1N1" }, "amd64")).toThrow(refusal("WRONG_ARCH"));
    expect(() => parseCpuTemplateSetting({ cpuTemplate: "T3" }, "amd64")).toThrow(
      refusal("INVALID_TEMPLATE"),
    );
    expect(() => parseCpuTemplateSetting({ cpuTemplate: "constructor" }, "amd64")).toThrow(
      refusal("INVALID_TEMPLATE"),
    );
    expect(() =>
      parseCpuTemplateSetting({ cpuTemplate: "t2cl", customCpuTemplatePath: "/t.json" }, "amd64"),
    ).toThrow(refusal("CONFLICTING_ENV"));
    expect(
      parseCpuTemplateSetting({ cpuTemplate: "none", customCpuTemplatePath: " /t.json " }, "amd64"),
    ).toEqual({ kind: "custom", path: "/t.json" });
    expect(() => parseCpuTemplateSetting({ cpuTemplate: 5 } as never, "amd64")).toThrow(
      refusal("INVALID_TEMPLATE"),
    );
  });
});

const CUSTOM_DIR = join(TEMPLATES_DIR, "custom");

onShared("readStaticTemplateCustomForm: a static template's custom form for checkCompatibility", () => {
  it("FC_CPU_TEMPLATE=T2CL built on Ice Lake resumes on Cascade Lake", () => {
    const template = readStaticTemplateCustomForm("t2cl", CUSTOM_DIR);
    for (const kernel of ["5.10", "6.1", "6.18"]) {
      const ice = fingerprint(`INTEL_ICELAKE_${kernel}`);
      const cascade = fingerprint(`INTEL_CASCADELAKE_${kernel}`);
      // Without a template (what the orchestrator passes for a static one today) the move is refused.
      expect(checkCompatibility({ source: ice, target: cascade }).compatible).toBe(false);
      expect(checkCompatibility({ source: ice, target: cascade, template })).toMatchObject({
        compatible: true,
        missing: [],
        reasons: [],
      });
    }
  });

  it("still refuses what the static template lets through: C3 from Ice Lake to Cascade Lake", () => {
    // The catalog says C3 is safe on both CPUs, but C3 passes avx512_vbmi2 through: "safe on" is not
    // "snapshots move between", which is why the custom form is read, not derived from the catalog.
    const verdict = checkCompatibility({
      source: fingerprint("INTEL_ICELAKE_6.1"),
      target: fingerprint("INTEL_CASCADELAKE_6.1"),
      template: readStaticTemplateCustomForm("C3", CUSTOM_DIR),
    });
    expect(verdict.compatible).toBe(false);
    expect(verdict.missing.map((m) => m.name)).toContain("avx512_vbmi2");
  });

  it("reads every static template's form, checked against the catalog's arch", () => {
    for (const template of STATIC_TEMPLATES) {
      const custom = readStaticTemplateCustomForm(template.name, CUSTOM_DIR);
      expect(custom, template.name).toEqual(
        parseCustomCpuTemplate(customTemplates().find(([file]) => file === template.customFile)?.[1]),
      );
    }
  });
});

describe("readStaticTemplateCustomForm refusals", () => {
  it("refuses an unknown name, a missing file, another arch's file and a file that is not a template", () => {
    const dir = mkdtempSync(join(tmpdir(), "sbx-static-form-"));
    try {
      expect(() => readStaticTemplateCustomForm("T9", dir)).toThrow(refusal("INVALID_TEMPLATE"));
      expect(() => readStaticTemplateCustomForm("T2CL", dir)).toThrow(/custom_cpu_templates\/T2CL\.json/);
      writeFileSync(
        join(dir, "T2CL.json"),
        JSON.stringify({ reg_modifiers: [{ addr: "0x603000000013c020", bitmap: "0b0" }] }),
      );
      expect(() => readStaticTemplateCustomForm("T2CL", dir)).toThrow(refusal("WRONG_ARCH"));
      writeFileSync(join(dir, "T2CL.json"), JSON.stringify({ cpuid_modifier: [] }));
      expect(() => readStaticTemplateCustomForm("T2CL", dir)).toThrow(refusal("INVALID_TEMPLATE"));
      writeFileSync(join(dir, "T2CL.json"), "{");
      expect(() => readStaticTemplateCustomForm("T2CL", dir)).toThrow(refusal("INVALID_TEMPLATE"));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("assertSnapshotLoadable: which Firecracker loads which Firecracker's snapshot", () => {
  const loads = (snapshot: string, running: string) => () =>
    assertSnapshotLoadable({ snapshotFirecrackerVersion: snapshot, runningFirecrackerVersion: running });

  it("accepts releases that share a snapshot format, in both directions", () => {
    expect(loads("1.14.2", "1.14.2")).not.toThrow();
    expect(loads("v1.13.0", "Firecracker v1.14.2")).not.toThrow();
    expect(loads("1.14.4", "1.13.1")).not.toThrow();
    expect(loads("1.16.0-dev", "1.16.0-dev")).not.toThrow();
    expect(snapshotFormatVersion("Firecracker v1.14.2")).toBe("8.0.0");
    expect(normalizeFirecrackerVersion("v1.16.0-dev")).toBe("1.16.0-dev");
  });

  it("refuses other formats and unknown versions, naming both versions", () => {
    for (const [snapshot, running] of [
      ["1.14.2", "1.15.0"],
      ["1.15.0", "1.14.2"],
      ["1.10.0", "1.10.1"], // a patch release changed the format
      ["unknown", "1.14.2"],
      ["1.14.2", "1.99.0"],
      ["1.16.0-dev", "1.16.0"],
    ] as const) {
      expect(loads(snapshot, running)).toThrow(refusal("SNAPSHOT_VERSION_INCOMPATIBLE"));
      expect(loads(snapshot, running)).toThrow(
        new RegExp(
          `made by Firecracker ${snapshot.replace(/\./g, "\\.")} cannot be loaded by Firecracker ${running.replace(/\./g, "\\.")}`,
        ),
      );
    }
  });

  it("checkCompatibility applies the same rule to two fingerprints' versions", () => {
    const host = hostFingerprint({ arch: "arm64", cpuinfo: ARM_CPUINFO });
    const at = (firecrackerVersion: string): Fingerprint => ({ ...host, firecrackerVersion });
    expect(checkCompatibility({ source: at("1.14.2"), target: at("1.13.0") }).compatible).toBe(true);
    const verdict = checkCompatibility({ source: at("1.10.0"), target: at("1.10.1") });
    expect(verdict.compatible).toBe(false);
    expect(verdict.reasons.join()).toMatch(/Firecracker 1\.10\.0 cannot be loaded by Firecracker 1\.10\.1/);
  });

  it("hostFingerprint records the Firecracker version it is given", () => {
    expect(hostFingerprint({ arch: "arm64", cpuinfo: ARM_CPUINFO }).firecrackerVersion).toBe("unknown");
    expect(
      hostFingerprint({ arch: "arm64", cpuinfo: ARM_CPUINFO, firecrackerVersion: "1.14.2" })
        .firecrackerVersion,
    ).toBe("1.14.2");
  });

  const firecracker = process.env.FIRECRACKER_BIN;
  it.skipIf(!firecracker)("knows the format the real Firecracker reports (needs FIRECRACKER_BIN)", () => {
    const run = (flag: string) =>
      execFileSync(firecracker as string, [flag], { encoding: "utf8" })
        .split("\n")[0]
        ?.trim() ?? "";
    expect(`v${snapshotFormatVersion(run("--version"))}`).toBe(run("--snapshot-version"));
  });
});

const ARM_CPUINFO = "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\nFeatures\t: fp asimd\n";
