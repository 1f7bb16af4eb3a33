// The create steps' first check: a host that lacks what the template's guest may use is refused before
// anything is created.
import { readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type CustomCpuTemplate,
  type Fingerprint,
  normalizeFleet,
  parseFingerprint,
  readStaticTemplateCustomForm,
} from "@sbx/cpu-template";
import { describe, expect, it } from "vitest";
import {
  firecrackerTestDataSkipReason,
  firecrackerTestDataSkipSuffix,
  firecrackerTestFile,
} from "../../../scripts/test-data.ts";
import { createConfig } from "./config.ts";
import { OrchestratorError } from "./errors.ts";
import { importBuild } from "./import-build.ts";
import { openOrchestratorState } from "./orchestrator-state.ts";
import { createSandbox } from "./sandbox.ts";

const fingerprints = firecrackerTestFile("cpu-templates/fingerprints");
const skip = firecrackerTestDataSkipReason();
if (skip) console.log(`[orchestrator] compatibility-step test skipped: ${skip}`);
const fp = (name: string) =>
  parseFingerprint(JSON.parse(readFileSync(join(fingerprints, `fingerprint_${name}host.json`), "utf8")));

/**
 * A build made on `source` (with `template`, by Firecracker `builtWith`), and a create of it checked
 * against `target`. The Firecracker "binary" is /bin/true (an ELF of this arch that prints no version,
 * so the configured v1.14.2 counts): every check before the launch runs, and the launch itself fails.
 */
async function createOn(
  source: Fingerprint,
  target: Fingerprint,
  template?: CustomCpuTemplate,
  builtWith = "v1.14.2",
) {
  const dir = await mkdtemp(join(tmpdir(), "sbx-compat-"));
  const config = createConfig({
    stateDir: join(dir, "state"),
    firecrackerBin: "/bin/true",
    // Refused before any VM starts: no jailer needed (the explicit opt-out).
    unjailed: true,
    firecrackerVersion: "v1.14.2",
  });
  try {
    await using state = await openOrchestratorState(config);
    await writeFile(join(dir, "vmstate"), "vmstate");
    await writeFile(join(dir, "mem"), Buffer.alloc(64 * 1024));
    await importBuild(state, {
      template: "moved",
      vmstate: join(dir, "vmstate"),
      memory: join(dir, "mem"),
      hostFingerprint: source,
      firecrackerVersion: builtWith,
      ...(template ? { cpuTemplate: template } : {}),
    });
    const error = await createSandbox(state, { template: "moved", compatibilityTarget: target }).then(
      () => undefined,
      (e: unknown) => e as Error & { cause?: unknown },
    );
    return { error, sandboxesLeft: readdirSync(join(config.stateDir, "sandboxes")) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

describe.skipIf(skip !== undefined)(
  `createSandbox's compatibility step${firecrackerTestDataSkipSuffix()}`,
  () => {
    it("refuses an Ice Lake build on a Cascade Lake host, naming the features, and leaves nothing", async () => {
      const { error, sandboxesLeft } = await createOn(fp("INTEL_ICELAKE_6.1"), fp("INTEL_CASCADELAKE_6.1"));
      expect(error).toBeInstanceOf(OrchestratorError);
      expect((error as OrchestratorError).code).toBe("STEP_FAILED");
      expect((error as OrchestratorError).details.step).toBe("compatibility");
      expect((error!.cause as OrchestratorError).code).toBe("TEMPLATE_INVALID");
      expect(String(error!.cause)).toMatch(/avx512_vbmi/);
      expect(sandboxesLeft).toEqual([]);
    });

    it("lets the same move through with the fleet's normalized template kept in the build (then fails later: no Firecracker)", async () => {
      const source = fp("INTEL_ICELAKE_6.1");
      const target = fp("INTEL_CASCADELAKE_6.1");
      const { error, sandboxesLeft } = await createOn(source, target, normalizeFleet([source, target]));
      expect(error).toBeInstanceOf(OrchestratorError);
      // Past the compatibility step: it failed where a real Firecracker is first needed.
      expect((error as OrchestratorError).details.step).toBe("firecracker");
      expect((error!.cause as { code?: string }).code).not.toBe("SNAPSHOT_VERSION_INCOMPATIBLE");
      expect(sandboxesLeft).toEqual([]);
    });

    it("a T2CL (static) build from Ice Lake resumes on Cascade Lake: the build keeps the static template's custom form", async () => {
      const source = fp("INTEL_ICELAKE_6.1");
      const target = fp("INTEL_CASCADELAKE_6.1");
      const t2cl = readStaticTemplateCustomForm("T2CL", firecrackerTestFile("cpu-templates/custom"));
      const moved = await createOn(source, target, t2cl);
      expect((moved.error as OrchestratorError).details.step).toBe("firecracker");
      // Without it, the same move is refused: the form is what makes it safe.
      const refused = await createOn(source, target);
      expect((refused.error as OrchestratorError).details.step).toBe("compatibility");
    });

    it("refuses a snapshot whose format the running Firecracker cannot load, naming both versions", async () => {
      const host = fp("INTEL_ICELAKE_6.1");
      for (const builtWith of ["v1.7.0", "v1.16.1"]) {
        const { error, sandboxesLeft } = await createOn(host, host, undefined, builtWith);
        expect((error as OrchestratorError).details.step).toBe("firecracker");
        const cause = error!.cause as Error & { code?: string };
        expect(cause.code).toBe("SNAPSHOT_VERSION_INCOMPATIBLE");
        expect(cause.message).toContain(builtWith.slice(1));
        expect(cause.message).toContain("1.14.2");
        expect(sandboxesLeft).toEqual([]);
      }
    });
  },
);
