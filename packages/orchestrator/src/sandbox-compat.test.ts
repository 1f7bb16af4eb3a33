// The create steps' first check: a host that lacks what the template's guest may use is refused before
// anything is created.
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { normalizeFleet, parseFingerprint } from "@sbx/cpu-template";
import { describe, expect, it } from "vitest";
import { OrchestratorError } from "./errors.ts";
import { createSandbox } from "./sandbox.ts";

const fingerprints = resolve(
  import.meta.dirname,
  "../../../../shared/firecracker/cpu-templates/fingerprints",
);
const skip = existsSync(fingerprints) ? undefined : `fingerprints not found at ${fingerprints}`;
if (skip) console.log(`[orchestrator] compatibility-step test skipped: ${skip}`);
const fp = (name: string) =>
  parseFingerprint(JSON.parse(readFileSync(join(fingerprints, `fingerprint_${name}host.json`), "utf8")));

describe.skipIf(skip !== undefined)("createSandbox's compatibility step", () => {
  it("refuses an Ice Lake template on a Cascade Lake host, naming the features, and leaves nothing", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sbx-compat-"));
    try {
      const directory = join(dir, "sandbox");
      const attempt = createSandbox({
        firecrackerBin: "/nonexistent/firecracker",
        snapshot: { vmstate: join(dir, "vmstate"), layers: [join(dir, "mem")] },
        directory,
        compatibility: { source: fp("INTEL_ICELAKE_6.1"), target: fp("INTEL_CASCADELAKE_6.1") },
      });
      const error = await attempt.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(OrchestratorError);
      expect((error as OrchestratorError).code).toBe("STEP_FAILED");
      expect(String((error as Error & { cause?: unknown }).cause ?? error)).toMatch(/avx512_vbmi/);
      expect(existsSync(directory)).toBe(false);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("lets the same move through with the fleet's normalized template (then fails later: no Firecracker)", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sbx-compat-"));
    try {
      const source = fp("INTEL_ICELAKE_6.1");
      const target = fp("INTEL_CASCADELAKE_6.1");
      const error = await createSandbox({
        firecrackerBin: "/nonexistent/firecracker",
        snapshot: { vmstate: join(dir, "vmstate"), layers: [join(dir, "mem")] },
        directory: join(dir, "sandbox"),
        compatibility: { source, target, template: normalizeFleet([source, target]) },
      }).then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      expect(String((error as Error & { cause?: unknown })?.cause ?? error)).not.toMatch(/cannot resume/);
      expect(existsSync(join(dir, "sandbox"))).toBe(false);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
