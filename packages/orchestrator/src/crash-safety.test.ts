// Crash safety of publishing: a process SIGKILLed at the start of every step of a template build (and
// once after it) leaves either the old template or the new one, each complete and verified, never a
// half build that a name points at; gc then removes exactly the partial builds, and nothing pinned.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildsDir, collectGarbage, readBuildHeader } from "./builds.ts";
import { Orchestrator } from "./orchestrator.ts";
import { readTemplate } from "./template-build.ts";
import { verifyTemplateFiles } from "./template-drift.ts";
import { type TemplateFixture, templateFixture } from "./test-template-fixture.ts";

const e2fsprogs = existsSync("/sbin/mkfs.ext4") || existsSync("/usr/sbin/mkfs.ext4");
const skipReason = !e2fsprogs
  ? "needs e2fsprogs"
  : !existsSync("/bin/busybox")
    ? "needs busybox-static"
    : undefined;
if (skipReason) console.log(`[orchestrator] crash-safety tests skipped: ${skipReason}`);

const CHILD = join(import.meta.dirname, "test-crash-child.ts");
const STEPS = [
  "staging",
  "inputs",
  "rootfs",
  "cpu-template",
  "network",
  "snapshot",
  "build-record",
  "working-set",
  "publish",
  "pointer",
];

describe.skipIf(skipReason !== undefined)("a template build killed at any step", () => {
  let fixture: TemplateFixture;
  beforeAll(async () => {
    fixture = await templateFixture();
  });
  afterAll(async () => {
    if (fixture) await rm(fixture.dir, { recursive: true, force: true });
  });

  /** Runs the child build; `killAt` undefined lets it finish. Returns the child's exit signal. */
  function build(killAt: string | undefined, marker: string): NodeJS.Signals | null {
    const result = spawnSync(
      process.execPath,
      [
        "--conditions=@sbx/source",
        CHILD,
        fixture.config.stateDir,
        fixture.config.busyboxDir,
        fixture.layoutDir,
        killAt ?? "-",
        marker,
      ],
      { stdio: ["ignore", "ignore", "pipe"], timeout: 120_000 },
    );
    if (killAt === undefined && result.status !== 0) throw new Error(`the build failed: ${result.stderr}`);
    return result.signal;
  }

  it("leaves the old template or the new, and gc removes only the partial build", async () => {
    expect(build(undefined, "A")).toBeNull();
    let current = await readTemplate(fixture.config, "base");
    for (const [i, step] of [...STEPS, undefined].entries()) {
      const marker = String.fromCharCode(66 + i); // B, C, ...: each attempt writes other memory bytes
      const signal = build(step, marker);
      expect(signal).toBe(step === undefined ? null : "SIGKILL");

      await using orchestrator = await Orchestrator.open(fixture.config);
      const after = await readTemplate(fixture.config, "base");
      // The name points at a complete build: the one before (killed before "pointer" ran) or the new one.
      expect(after.id === current.id || step === undefined).toBe(true);
      expect(await verifyTemplateFiles(after.directory, after.manifest, { digests: true })).toEqual([]);
      expect((await readBuildHeader(fixture.config, after.id)).builds).toEqual([after.id]);

      const report = await orchestrator.gc();
      // Only the named build survives gc; what the crash left (staging, an unnamed build) is gone.
      expect(readdirSync(buildsDir(fixture.config))).toEqual([after.id]);
      expect(report.kept).toEqual([{ id: after.id, pinnedBy: "template base" }]);
      if (step !== undefined && STEPS.indexOf(step) >= STEPS.indexOf("staging") + 1)
        expect(report.removed.length + report.leftovers.length).toBeGreaterThan(0);
      current = after;
    }
    // A final gc has nothing left to do.
    const quiet = await collectGarbage(fixture.config);
    expect(quiet.removed).toEqual([]);
    expect(quiet.leftovers).toEqual([]);
  }, 600_000);
});
