// The template build's step list without Firecracker: the real rootfs from an OCI layout, a stand-in
// for the three steps that need a VM, template.json, atomic publish, and cleanup on failure.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ext4ReadFile } from "@sbx/rootfs/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  firecrackerTestDataSkipReason,
  firecrackerTestDataSkipSuffix,
  firecrackerTestFile,
} from "../../../scripts/test-data.ts";
import { buildDir, buildsDir, collectGarbage, removeTemplatePointer, templatesDir } from "./builds.ts";
import { createConfig } from "./config.ts";
import { OrchestratorError } from "./errors.ts";
import { type OrchestratorState, openOrchestratorState } from "./orchestrator-state.ts";
import type { ProgressEvent } from "./progress.ts";
import { type Step, StepList } from "./steps.ts";
import { buildTemplate, readTemplate, type TemplateBuildContext, templateDrift } from "./template-build.ts";
import { BUILD_FILES } from "./template-manifest.ts";
import { type TemplateFixture, templateFixture, testResolver } from "./test-template-fixture.ts";

const e2fsprogs = existsSync("/sbin/mkfs.ext4") || existsSync("/usr/sbin/mkfs.ext4");
const busybox = existsSync("/bin/busybox");
const skipReason = !e2fsprogs ? "needs e2fsprogs" : !busybox ? "needs busybox-static" : undefined;
if (skipReason) console.log(`[orchestrator] template build tests skipped: ${skipReason}`);

const fdCount = () => readdirSync("/proc/self/fd").length;

/** Writes snapshot-shaped files where the VM steps would: what a fork's fake launcher does. */
const fakeSnapshot: Step<TemplateBuildContext> = {
  name: "snapshot",
  async run(context) {
    await writeFile(join(context.stagingDir, BUILD_FILES.vmstate), "vmstate");
    await writeFile(join(context.stagingDir, BUILD_FILES.memory), Buffer.alloc(64 * 1024, 7));
  },
};
const withoutVm = (steps: StepList<TemplateBuildContext>) =>
  steps.remove("provision").remove("boot").remove("wait-ready").replace("snapshot", fakeSnapshot);

describe.skipIf(skipReason !== undefined)("template build steps", () => {
  let fixture: TemplateFixture;
  let state: OrchestratorState;
  let fdsBefore: number;

  beforeAll(async () => {
    fixture = await templateFixture();
    state = await openOrchestratorState(fixture.config);
    fdsBefore = fdCount();
  });
  afterAll(async () => {
    await state?.close();
    if (fixture) await rm(fixture.dir, { recursive: true, force: true });
  });

  it("builds the rootfs from the OCI image, records everything in build.json, publishes atomically", async () => {
    const events: string[] = [];
    const built = await buildTemplate(state, {
      request: { name: "base", ociLayout: fixture.layoutDir, network: false, memoryMib: 64, vcpuCount: 1 },
      resolver: testResolver("/bin/true"),
      steps: withoutVm,
      onEvent: (event) => {
        if (event.kind === "step-end") events.push(event.step);
      },
    });
    expect(events).toEqual([
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
    ]);
    expect(built.directory).toBe(buildDir(fixture.config, built.id));
    const { manifest, id } = await readTemplate(fixture.config, "base");
    expect(id).toBe(built.id);
    expect(manifest).toEqual(built.manifest);
    expect(manifest.kind).toBe("template");
    expect(manifest.boot!.memoryMib).toBe(64);
    expect(manifest.boot!.busybox.version).toBe(fixture.config.busyboxVersion);
    expect(manifest.boot!.kernelCommandLine).toMatch(/init=\/\.sbx\/init/);
    expect(manifest.boot!.kernelCommandLine).not.toMatch(/sbx\.epoch|sbx\.provision/);
    expect(manifest.network).toBeUndefined();
    // The rootfs is the image plus sbx's guest files, and the manifest's digest is its digest.
    const rootfs = join(built.directory, BUILD_FILES.rootfs);
    expect((await ext4ReadFile(rootfs, "/etc/motd")).toString()).toBe("built by sbx tests\n");
    const init = (await ext4ReadFile(rootfs, "/.sbx/init")).toString();
    expect(init).toMatch(/^#!/);
    expect(manifest.files[BUILD_FILES.rootfs]!.sizeBytes).toBe(readFileSync(rootfs).length);
    // The fingerprint is stored in Firecracker's own format.
    expect(manifest.hostFingerprint).toHaveProperty("guest_cpu_config");
    // One pointer, one build, no staging left.
    expect(readdirSync(templatesDir(fixture.config))).toEqual(["base.json"]);
    expect(readdirSync(buildsDir(fixture.config))).toEqual([built.id]);
    expect(readdirSync(built.directory).sort()).toEqual(
      [
        BUILD_FILES.manifest,
        BUILD_FILES.memory,
        BUILD_FILES.header,
        BUILD_FILES.rootfs,
        BUILD_FILES.vmstate,
      ].sort(),
    );
  });

  it("a failing step removes the staging directory and keeps the published template", async () => {
    const before = (await readTemplate(fixture.config, "base")).manifest;
    const failing: Step<TemplateBuildContext> = {
      name: "snapshot",
      run() {
        throw new Error("the VM crashed");
      },
    };
    await expect(
      buildTemplate(state, {
        request: { name: "base", ociLayout: fixture.layoutDir, network: false },
        resolver: testResolver("/bin/true"),
        steps: (steps) => withoutVm(steps).replace("snapshot", failing),
      }),
    ).rejects.toThrow(/the VM crashed/);
    expect(readdirSync(templatesDir(fixture.config))).toEqual(["base.json"]);
    expect(readdirSync(buildsDir(fixture.config))).toEqual([before.id]);
    expect((await readTemplate(fixture.config, "base")).manifest).toEqual(before);
  });

  it("a rebuild makes a new build and moves the name; the old build stays until gc frees it", async () => {
    const before = (await readTemplate(fixture.config, "base")).manifest;
    const oldFiles = readdirSync(buildDir(fixture.config, before.id)).sort();
    const built = await buildTemplate(state, {
      request: { name: "base", ociLayout: fixture.layoutDir, network: false, memoryMib: 96 },
      resolver: testResolver("/bin/true"),
      steps: withoutVm,
    });
    expect(built.manifest.boot!.memoryMib).toBe(96);
    expect(built.id > before.id).toBe(true);
    expect((await readTemplate(fixture.config, "base")).id).toBe(built.id);
    // Nothing in the old build changed.
    expect(readdirSync(buildDir(fixture.config, before.id)).sort()).toEqual(oldFiles);
    expect(readdirSync(buildsDir(fixture.config)).sort()).toEqual([before.id, built.id].sort());
    const report = await collectGarbage(fixture.config, state.leases);
    expect(report.removed.map((r) => r.id)).toEqual([before.id]);
    expect(report.bytesFreed).toBeGreaterThan(64 * 1024);
    expect(report.kept).toEqual([{ id: built.id, pinnedBy: "template base" }]);
    expect(readdirSync(buildsDir(fixture.config))).toEqual([built.id]);
    expect(fdCount()).toBe(fdsBefore);
  });

  it.skipIf(process.arch !== "x64" || firecrackerTestDataSkipReason() !== undefined)(
    `a static CPU template's custom form is kept in the build when its directory is configured${firecrackerTestDataSkipSuffix()}`,
    async () => {
      const forms = firecrackerTestFile("cpu-templates/custom");
      const staticState = {
        ...state,
        config: {
          ...state.config,
          cpuTemplate: createConfig({ cpuTemplate: "T2CL", targetArch: "amd64" }).cpuTemplate,
          staticCpuTemplatesDir: forms,
        },
      } as OrchestratorState;
      const built = await buildTemplate(staticState, {
        request: { name: "static", ociLayout: fixture.layoutDir, network: false },
        resolver: testResolver("/bin/true"),
        steps: withoutVm,
      });
      expect(built.manifest.boot!.cpuTemplate).toEqual({ kind: "static", name: "T2CL" });
      const kept = JSON.parse(readFileSync(join(built.directory, BUILD_FILES.cpuTemplate), "utf8"));
      expect(kept).toEqual(JSON.parse(readFileSync(join(forms, "T2CL.json"), "utf8")));
      await removeTemplatePointer(fixture.config, "static");
      await collectGarbage(fixture.config, state.leases);
    },
  );

  it("unpacks untrusted layers under limits by default; an image past one fails the build and leaves nothing", async () => {
    expect(createConfig({})).toMatchObject({
      unpackMaxBytes: expect.any(Number),
      unpackMaxEntries: expect.any(Number),
      unpackMaxPathDepth: expect.any(Number),
    });
    const tight = { ...state, config: { ...state.config, unpackMaxEntries: 2 } } as OrchestratorState;
    const error = await buildTemplate(tight, {
      request: { name: "tight", ociLayout: fixture.layoutDir, network: false },
      resolver: testResolver("/bin/true"),
      steps: withoutVm,
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "STEP_FAILED", details: { step: "inputs" } });
    expect((error as Error).cause).toMatchObject({ code: "UNPACK_LIMIT_EXCEEDED" });
    expect(readdirSync(buildsDir(fixture.config)).filter((name) => name.startsWith("."))).toEqual([]);
    expect(readdirSync(templatesDir(fixture.config))).not.toContain("tight.json");
  });

  it("reports byte progress of the unpack and of the ext4 image, each ending done", async () => {
    const events: ProgressEvent[] = [];
    const built = await buildTemplate(state, {
      request: { name: "progress", ociLayout: fixture.layoutDir, network: false },
      resolver: testResolver("/bin/true"),
      steps: withoutVm,
      onProgress: (event) => events.push(event),
    });
    const phases = new Set(events.map((e) => e.phase));
    expect(phases).toEqual(new Set(["unpack", "ext4"]));
    for (const phase of phases) expect(events.filter((e) => e.phase === phase).at(-1)?.done).toBe(true);
    const ext4 = events.filter((e) => e.phase === "ext4");
    expect(ext4.at(-1)?.bytes).toBeGreaterThan(0);
    await removeTemplatePointer(fixture.config, "progress");
    expect((await collectGarbage(fixture.config, state.leases)).removed.map((r) => r.id)).toEqual([built.id]);
  });

  it("templateDrift: null for the same request, the reason for a changed one", async () => {
    const request = { name: "base", ociLayout: fixture.layoutDir, network: false, memoryMib: 96 };
    const resolver = testResolver("/bin/true");
    expect(await templateDrift(fixture.config, request, { resolver })).toBeNull();
    expect(await templateDrift(fixture.config, { ...request, memoryMib: 128 }, { resolver })).toMatch(
      /memoryMib.*96.*128/,
    );
    expect(
      await templateDrift(fixture.config, { ...request, provisionScript: "echo hi\n" }, { resolver }),
    ).toMatch(/provisionScriptSha256/);
    expect(await templateDrift(fixture.config, { ...request, name: "absent" }, { resolver })).toMatch(
      /does not exist/,
    );
    // The check unpacks into a temp directory and removes it.
    expect(readdirSync(templatesDir(fixture.config))).toEqual(["base.json"]);
  });

  it("refuses hostile template names and reports a missing template by name", async () => {
    for (const name of ["../escape", "a/b", "", ".hidden", "UPPER"]) {
      await expect(
        buildTemplate(state, { request: { name, ociLayout: fixture.layoutDir }, steps: withoutVm }),
      ).rejects.toMatchObject({ code: "INVALID_OPTIONS" });
    }
    const error = await readTemplate(fixture.config, "nope").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OrchestratorError);
    expect(error).toMatchObject({ code: "TEMPLATE_NOT_FOUND" });
  });

  it("refuses to boot another arch's template with ARCH_MISMATCH, and cleans up", async () => {
    const other = fixture.config.targetArch === "amd64" ? "arm64" : "amd64";
    const otherState = { ...state, config: { ...state.config, targetArch: other } } as OrchestratorState;
    // The rootfs for another arch is @sbx/rootfs's business (tested there); the boot must refuse.
    const error = await buildTemplate(otherState, {
      request: { name: "other", ociLayout: fixture.layoutDir, network: false },
      steps: (steps) => new StepList([steps.get("staging"), steps.get("boot")]),
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "STEP_FAILED", details: { step: "boot" } });
    expect((error as Error).cause).toMatchObject({ code: "ARCH_MISMATCH" });
    expect(readdirSync(templatesDir(fixture.config))).toEqual(["base.json"]);
    expect(readdirSync(buildsDir(fixture.config)).filter((name) => name.startsWith("."))).toEqual([]);
  });
});
