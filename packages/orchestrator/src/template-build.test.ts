// The template build's step list without Firecracker: the real rootfs from an OCI layout, a stand-in
// for the three steps that need a VM, template.json, atomic publish, and cleanup on failure.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ext4ReadFile } from "@sbx/rootfs/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OrchestratorError } from "./errors.ts";
import { type OrchestratorState, openOrchestratorState } from "./orchestrator-state.ts";
import { type Step, StepList } from "./steps.ts";
import {
  buildTemplate,
  readTemplate,
  TEMPLATE_FILES,
  type TemplateBuildContext,
  templateDrift,
  templatesDir,
} from "./template-build.ts";
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
    await writeFile(join(context.stagingDir, TEMPLATE_FILES.vmstate), "vmstate");
    await writeFile(join(context.stagingDir, TEMPLATE_FILES.memory), Buffer.alloc(64 * 1024, 7));
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

  it("builds the rootfs from the OCI image, records everything in template.json, publishes atomically", async () => {
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
      "manifest",
      "publish",
    ]);
    expect(built.directory).toBe(join(templatesDir(fixture.config), "base"));
    const { manifest } = await readTemplate(fixture.config, "base");
    expect(manifest).toEqual(built.manifest);
    expect(manifest.boot.memoryMib).toBe(64);
    expect(manifest.boot.busybox.version).toBe(fixture.config.busyboxVersion);
    expect(manifest.boot.kernelCommandLine).toMatch(/init=\/\.sbx\/init/);
    expect(manifest.boot.kernelCommandLine).not.toMatch(/sbx\.epoch|sbx\.provision/);
    expect(manifest.network).toBeUndefined();
    // The rootfs is the image plus sbx's guest files, and the manifest's digest is its digest.
    const rootfs = join(built.directory, TEMPLATE_FILES.rootfs);
    expect((await ext4ReadFile(rootfs, "/etc/motd")).toString()).toBe("built by sbx tests\n");
    const init = (await ext4ReadFile(rootfs, "/.sbx/init")).toString();
    expect(init).toMatch(/^#!/);
    expect(manifest.rootfs.sizeBytes).toBe(readFileSync(rootfs).length);
    // The fingerprint is stored in Firecracker's own format.
    expect(manifest.hostFingerprint).toHaveProperty("guest_cpu_config");
    // Nothing but the template is left in the templates directory.
    expect(readdirSync(templatesDir(fixture.config))).toEqual(["base"]);
    expect(readdirSync(built.directory).sort()).toEqual(
      [TEMPLATE_FILES.manifest, TEMPLATE_FILES.memory, TEMPLATE_FILES.rootfs, TEMPLATE_FILES.vmstate].sort(),
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
    expect(readdirSync(templatesDir(fixture.config))).toEqual(["base"]);
    expect((await readTemplate(fixture.config, "base")).manifest).toEqual(before);
  });

  it("a rebuild replaces the template in one rename and leaves no old copy", async () => {
    const before = (await readTemplate(fixture.config, "base")).manifest;
    const built = await buildTemplate(state, {
      request: { name: "base", ociLayout: fixture.layoutDir, network: false, memoryMib: 96 },
      resolver: testResolver("/bin/true"),
      steps: withoutVm,
    });
    expect(built.manifest.boot.memoryMib).toBe(96);
    expect(built.manifest.createdAt >= before.createdAt).toBe(true);
    expect(readdirSync(templatesDir(fixture.config))).toEqual(["base"]);
    expect(fdCount()).toBe(fdsBefore);
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
    expect(readdirSync(templatesDir(fixture.config))).toEqual(["base"]);
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
    expect(readdirSync(templatesDir(fixture.config))).toEqual(["base"]);
  });
});
