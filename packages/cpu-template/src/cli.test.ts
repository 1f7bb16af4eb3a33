import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { runCli } from "./cli.ts";
import { sharedSkipReason, sharedSkipSuffix, TEMPLATES_DIR } from "./test-shared.ts";

function run(...argv: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = runCli(argv, { out: (t) => out.push(t), err: (t) => err.push(t) });
  return { code, out: out.join("\n"), err: err.join("\n") };
}
const fp = (name: string) => join(TEMPLATES_DIR, "fingerprints", `fingerprint_${name}host.json`);

describe("sbx-cpu-template", () => {
  it("refuses bad usage with exit 2 and the usage text", () => {
    expect(run()).toMatchObject({ code: 2 });
    expect(run("frobnicate").err).toMatch(/unknown command frobnicate[\s\S]*usage:/);
    expect(run("check", "--source", "x").code).toBe(2);
  });

  it.skipIf(sharedSkipReason !== undefined)(
    `check: exit 1 and the missing features when incompatible, 0 with the normalized template${sharedSkipSuffix}`,
    () => {
      const bad = run("check", "--source", fp("INTEL_ICELAKE_6.1"), "--target", fp("INTEL_CASCADELAKE_6.1"));
      expect(bad.code).toBe(1);
      expect(JSON.parse(bad.out).missing.map((m: { name: string }) => m.name)).toContain("avx512_vbmi");
      const recommended = run("recommend", fp("INTEL_ICELAKE_6.1"), fp("INTEL_CASCADELAKE_6.1"));
      expect(JSON.parse(recommended.out)).toMatchObject({ kind: "static", template: { name: "T2CL" } });
      const validate = run("validate", join(TEMPLATES_DIR, "custom", "T2CL.json"), "--pretty");
      expect(validate).toMatchObject({ code: 0 });
      expect(validate.out).toContain('\n  "valid": true');
      const invalid = run("validate", fp("INTEL_ICELAKE_6.1"));
      expect(invalid.code).toBe(1);
      expect(JSON.parse(invalid.out).error).toBe("INVALID_TEMPLATE");
    },
  );
});
