import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Ajv2020 } from "ajv/dist/2020.js";
import { describe, expect, it } from "vitest";
import { applyTemplate } from "./apply.ts";
import { cpuName } from "./catalog.ts";
import { checkCompatibility } from "./compat.ts";
import { templateFromEnv } from "./env.ts";
import { CpuTemplateError } from "./errors.ts";
import { IA32_ARCH_CAPABILITIES, X86_FEATURE_REGISTERS } from "./features.ts";
import { cpuidKey, type Fingerprint, fingerprintToFile, parseFingerprint } from "./fingerprint.ts";
import { normalizeFleet } from "./normalize.ts";
import { recommendTemplate } from "./recommend.ts";
import { customCpuTemplateShapeSchema, parseCustomCpuTemplate } from "./schema.ts";
import {
  allFingerprintNames,
  customTemplates,
  fingerprint,
  sharedSkipReason,
  sharedSkipSuffix,
  TEMPLATES_DIR,
} from "./test-shared.ts";

if (sharedSkipReason) console.log(`[cpu-template] tests on Firecracker's files skipped: ${sharedSkipReason}`);
const onShared = (name: string, body: () => void) =>
  describe.skipIf(sharedSkipReason !== undefined)(`${name}${sharedSkipSuffix}`, body);

/** Mutations of a template: type changes Firecracker's JSON schema catches, and format changes it does not. */
function mutations(template: Record<string, unknown>): unknown[] {
  const out: unknown[] = [];
  const clone = () => structuredClone(template) as Record<string, any>;
  for (const key of Object.keys(template)) {
    const a = clone();
    a[key] = "not an array";
    out.push(a);
    const b = clone();
    delete b[key];
    out.push(b);
  }
  const first = (t: Record<string, any>) =>
    t.cpuid_modifiers?.[0] ?? t.reg_modifiers?.[0] ?? t.vcpu_features?.[0];
  for (const change of [
    (m: any) => {
      m.leaf = 1;
    },
    (m: any) => {
      m.flags = "0";
    },
    (m: any) => {
      m.addr = 96;
    },
    (m: any) => {
      m.index = "0";
    },
    (m: any) => {
      m.bitmap = 5;
    },
    (m: any) => {
      if (m.modifiers) m.modifiers[0].register = "exx";
    },
    (m: any) => {
      if (m.modifiers) m.modifiers[0].bitmap = "0b2";
      else m.bitmap = "0b2";
    },
    (m: any) => {
      m.unknown_field = true;
    },
  ]) {
    const t = clone();
    const m = first(t);
    if (!m) continue;
    change(m);
    out.push(t);
  }
  return out;
}

onShared("custom templates against Firecracker's schema.json", () => {
  // Compiled on first use: a describe body runs even when the suite is skipped (no ../shared).
  let compiled: ((value: unknown) => boolean) | undefined;
  const validate = (value: unknown) => {
    compiled ??= new Ajv2020({ strict: false }).compile(
      JSON.parse(readFileSync(join(TEMPLATES_DIR, "schema.json"), "utf8")),
    );
    return compiled(value);
  };

  it("our shape schema and ajv accept and reject the same templates and mutations", () => {
    let compared = 0;
    for (const [file, template] of customTemplates()) {
      for (const candidate of [template, ...mutations(template as Record<string, unknown>)]) {
        expect(
          customCpuTemplateShapeSchema.safeParse(candidate).success,
          `${file}: ${JSON.stringify(candidate).slice(0, 120)}`,
        ).toBe(validate(candidate));
        compared++;
      }
    }
    expect(compared).toBeGreaterThan(50);
  });

  it("every template of Firecracker parses fully; format errors the JSON schema lets through are caught", () => {
    for (const [file, template] of customTemplates())
      expect(() => parseCustomCpuTemplate(template), file).not.toThrow();
    const t2cl = customTemplates().find(([f]) => f === "T2CL.json")![1] as any;
    const badBitmap = structuredClone(t2cl);
    badBitmap.cpuid_modifiers[0].modifiers[0].bitmap = "0b0101";
    expect(validate(badBitmap)).toBe(true); // Firecracker's schema checks types only
    expect(() => parseCustomCpuTemplate(badBitmap)).toThrow(/exactly 32 bits/);
    const typo = structuredClone(t2cl);
    typo.cpuid_modifer = [];
    expect(() => parseCustomCpuTemplate(typo)).toThrow(/cpuid_modifer/);
  });
});

onShared("fingerprints of real hosts", () => {
  it("parse, with vendor and CPU identified", () => {
    const names = allFingerprintNames();
    expect(names.length).toBeGreaterThanOrEqual(15);
    for (const name of names) expect(fingerprint(name).kernelVersion, name).toMatch(/^\d+\.\d+/);
    expect(cpuName(fingerprint("INTEL_CASCADELAKE_6.1"))).toBe("Cascade Lake");
    expect(cpuName(fingerprint("INTEL_ICELAKE_6.1"))).toBe("Ice Lake");
    expect(cpuName(fingerprint("AMD_MILAN_6.1"))).toBe("Milan");
    expect(cpuName(fingerprint("ARM_NEOVERSE_V1_6.1"))).toBe("Neoverse V1");
    expect(cpuName(fingerprint("ARM_NEOVERSE_N1_6.1"))).toBe("Neoverse N1");
    expect(fingerprint("AMD_MILAN_5.10").vendor).toBe("AuthenticAMD");
  });

  it("survive fingerprintToFile → parseFingerprint unchanged, in Firecracker's own layout", () => {
    for (const name of allFingerprintNames()) {
      const parsed = fingerprint(name);
      const file = fingerprintToFile(parsed);
      expect(parseFingerprint(JSON.parse(JSON.stringify(file))), name).toEqual(parsed);
      const original = JSON.parse(
        readFileSync(join(TEMPLATES_DIR, "fingerprints", `fingerprint_${name}host.json`), "utf8"),
      );
      const leafCount = (f: {
        guest_cpu_config: { cpuid_modifiers?: unknown[] | undefined; reg_modifiers?: unknown[] | undefined };
      }) => (f.guest_cpu_config.cpuid_modifiers ?? f.guest_cpu_config.reg_modifiers ?? []).length;
      expect(leafCount(file), name).toBe(leafCount(original));
    }
  });
});

onShared("compatibility verdicts", () => {
  it("Ice Lake → Cascade Lake without a template: incompatible, naming the features", () => {
    const verdict = checkCompatibility({
      source: fingerprint("INTEL_ICELAKE_6.1"),
      target: fingerprint("INTEL_CASCADELAKE_6.1"),
    });
    expect(verdict.compatible).toBe(false);
    const names = verdict.missing.map((m) => m.name);
    for (const name of ["avx512_vbmi", "gfni", "vaes", "vpclmulqdq", "avx512_vbmi2"])
      expect(names).toContain(name);
    expect(verdict.missing.find((m) => m.name === "gfni")?.where).toBe("leaf 0x7 subleaf 0 ecx bit 8");
  });

  it("with the fleet's normalized template, or Firecracker's T2CL, the move is safe both ways", () => {
    const ice = fingerprint("INTEL_ICELAKE_6.1");
    const cascade = fingerprint("INTEL_CASCADELAKE_6.1");
    const normalized = normalizeFleet([ice, cascade]);
    expect(checkCompatibility({ source: ice, target: cascade, template: normalized })).toMatchObject({
      compatible: true,
      missing: [],
    });
    expect(checkCompatibility({ source: cascade, target: ice, template: normalized }).compatible).toBe(true);
    const t2cl = parseCustomCpuTemplate(customTemplates().find(([f]) => f === "T2CL.json")![1]);
    const verdict = checkCompatibility({ source: ice, target: cascade, template: t2cl });
    expect(verdict.missing.map((m) => m.name)).toEqual([]);
  });

  it("names the other reasons: vendor, kernel direction, Firecracker version", () => {
    const vendor = checkCompatibility({
      source: fingerprint("INTEL_ICELAKE_6.1"),
      target: fingerprint("AMD_MILAN_6.1"),
    });
    expect(vendor.reasons.join()).toMatch(/different CPU vendors/);
    const kernel = checkCompatibility({
      source: fingerprint("INTEL_ICELAKE_6.1"),
      target: fingerprint("INTEL_ICELAKE_5.10"),
    });
    expect(kernel.compatible).toBe(false);
    expect(kernel.reasons.join()).toMatch(/6\.1 → 5\.10/);
    expect(
      checkCompatibility({
        source: fingerprint("INTEL_ICELAKE_5.10"),
        target: fingerprint("INTEL_ICELAKE_6.1"),
      }).compatible,
    ).toBe(true);
  });
});

/** The feature registers a guest sees on `host` under `template`. */
const featureView = (host: Fingerprint, template: ReturnType<typeof normalizeFleet>) => {
  const guest = applyTemplate(host, template);
  return X86_FEATURE_REGISTERS.map(
    // A leaf KVM does not offer reads as zeros in the guest.
    (r) =>
      guest.cpuid.get(cpuidKey(r.leaf, r.subleaf))?.[{ eax: 0, ebx: 1, ecx: 2, edx: 3 }[r.register]] ?? 0,
  );
};

onShared("fleet normalization", () => {
  it("gives every Intel host identical feature leaves, and hides only what some host lacks", () => {
    const fleet = [
      "INTEL_CASCADELAKE_6.1",
      "INTEL_ICELAKE_6.1",
      "INTEL_CASCADELAKE_5.10",
      "INTEL_ICELAKE_6.18",
    ].map(fingerprint);
    const template = normalizeFleet(fleet);
    expect(() => parseCustomCpuTemplate(template)).not.toThrow();
    const views = fleet.map((f) => JSON.stringify(featureView(f, template)));
    expect(new Set(views).size).toBe(1);
    // What remains is exactly what every host has: the AND of the raw feature registers.
    const raw = fleet.map((f) => featureView(f, { cpuid_modifiers: [] }));
    const and = raw[0]!.map((_, i) =>
      raw.reduce((acc, view) => (acc & (view[i] as number)) >>> 0, 0xffffffff),
    );
    expect(featureView(fleet[0]!, template)).toEqual(and);
    expect(featureView(fleet[1]!, template)).not.toEqual(raw[1]); // Ice Lake gave something up
  });

  it("gives every AMD host identical feature leaves too (Milan on 5.10, 6.1 and 6.18)", () => {
    const fleet = ["AMD_MILAN_5.10", "AMD_MILAN_6.1", "AMD_MILAN_6.18"].map(fingerprint);
    const template = normalizeFleet(fleet);
    expect(() => parseCustomCpuTemplate(template)).not.toThrow();
    expect(new Set(fleet.map((f) => JSON.stringify(featureView(f, template)))).size).toBe(1);
    for (const source of fleet)
      for (const target of fleet)
        expect(checkCompatibility({ source, target, template }).missing).toEqual([]);
  });

  it("hides the mitigation claims of IA32_ARCH_CAPABILITIES from hosts when another host has no such MSR", () => {
    const milan = fingerprint("AMD_MILAN_6.1");
    expect(milan.msrs.has(IA32_ARCH_CAPABILITIES)).toBe(false);
    // An AMD host whose KVM emulates the MSR and claims RDCL_NO (bit 0) and MDS_NO (bit 5).
    const claiming = { ...milan, msrs: new Map([[IA32_ARCH_CAPABILITIES, 0b100001n]]) };
    const template = normalizeFleet([claiming, milan]);
    expect(template.msr_modifiers).toEqual([
      { addr: "0x10a", bitmap: expect.stringMatching(/^0b[01x]{64}$/) },
    ]);
    const bitmap = template.msr_modifiers![0]!.bitmap.slice(2);
    expect([bitmap.at(-1), bitmap.at(-6)]).toEqual(["0", "0"]); // both claims forced off
    expect(bitmap.replace(/x/g, "")).toBe("00");
    expect(checkCompatibility({ source: claiming, target: milan, template }).missing).toEqual([]);
    expect(checkCompatibility({ source: claiming, target: milan }).missing.map((m) => m.name)).toEqual([
      "RDCL_NO",
      "MDS_NO",
    ]);
  });

  it("refuses mixed vendors and architectures with the reason", () => {
    expect(() => normalizeFleet([fingerprint("INTEL_ICELAKE_6.1"), fingerprint("AMD_MILAN_6.1")])).toThrow(
      /mixes CPU vendors/,
    );
    expect(() =>
      normalizeFleet([fingerprint("INTEL_ICELAKE_6.1"), fingerprint("ARM_NEOVERSE_N1_6.1")]),
    ).toThrow(/mixes architectures/);
  });

  it("arm64: per-field minimum of ID registers, only where the host kernels can write them", () => {
    expect(() =>
      normalizeFleet([fingerprint("ARM_NEOVERSE_V1_6.1"), fingerprint("ARM_NEOVERSE_N1_6.1")]),
    ).toThrow(expect.objectContaining({ code: "ID_REGISTERS_NOT_WRITABLE" }));
    const fleet = [fingerprint("ARM_NEOVERSE_V1_6.18"), fingerprint("ARM_NEOVERSE_N1_6.18")];
    const template = normalizeFleet(fleet);
    expect(template.reg_modifiers!.length).toBeGreaterThan(0);
    expect(template.vcpu_features).toBeUndefined(); // SVE/PAC stay opt-in
    const [v1, n1] = fleet.map((f) => applyTemplate(f, template));
    expect(checkCompatibility({ source: fleet[0]!, target: fleet[1]!, template }).missing).toEqual([]);
    expect(v1!.registers.get("0x603000000013c020")).toBe(n1!.registers.get("0x603000000013c020"));
    // Without the template V1's extra features show up as missing on N1, by name.
    const names = checkCompatibility({ source: fleet[0]!, target: fleet[1]! }).missing.map((m) => m.name);
    for (const name of ["dit", "ras", "i8mm", "bf16"]) expect(names).toContain(name);
  });
});

onShared("recommendations", () => {
  it("Cascade Lake + Ice Lake → T2CL; Milan → T2A; anything else → the normalized template", () => {
    const both = recommendTemplate([fingerprint("INTEL_CASCADELAKE_6.1"), fingerprint("INTEL_ICELAKE_6.1")]);
    expect(both.kind === "static" && both.template.name).toBe("T2CL");
    const milan = recommendTemplate([fingerprint("AMD_MILAN_6.1")]);
    expect(milan.kind === "static" && milan.template.name).toBe("T2A");
    const arm = recommendTemplate([fingerprint("ARM_NEOVERSE_V1_6.18"), fingerprint("ARM_NEOVERSE_N1_6.18")]);
    expect(arm.kind === "static" && arm.template.name).toBe("V1N1");
  });
});

describe("templateFromEnv", () => {
  it("reads FC_CPU_TEMPLATE or FC_CUSTOM_CPU_TEMPLATE_PATH, never both, never the other arch's", () => {
    expect(templateFromEnv({}, "amd64")).toEqual({ kind: "none" });
    expect(templateFromEnv({ FC_CPU_TEMPLATE: "None" }, "amd64")).toEqual({ kind: "none" });
    expect(templateFromEnv({ FC_CPU_TEMPLATE: " T2CL " }, "amd64")).toMatchObject({
      kind: "static",
      name: "T2CL",
    });
    expect(() => templateFromEnv({ FC_CPU_TEMPLATE: "T2CL" }, "arm64")).toThrow(
      expect.objectContaining({ code: "WRONG_ARCH" }),
    );
    expect(() => templateFromEnv({ FC_CPU_TEMPLATE: "T3" }, "amd64")).toThrow(/not a static template/);
    expect(() =>
      templateFromEnv({ FC_CPU_TEMPLATE: "T2CL", FC_CUSTOM_CPU_TEMPLATE_PATH: "/x.json" }, "amd64"),
    ).toThrow(expect.objectContaining({ code: "CONFLICTING_ENV" }));
    expect(() => templateFromEnv({ FC_CUSTOM_CPU_TEMPLATE_PATH: "/nonexistent.json" }, "amd64")).toThrow(
      CpuTemplateError,
    );
  });
});
