// What a fresh clone does with only a reachable release mirror: `sbx setup` fetches Firecracker and a
// kernel into the artifact layout, and the orchestrator builds a template and runs a sandbox from
// exactly what setup installed (no FIRECRACKER_BIN, no resolver override). The mirror serves the real
// Firecracker binary in a release tarball and the tiny test guest as the CI "kernel".
import { existsSync, readdirSync } from "node:fs";
import { readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildTestGuest, realFirecracker, TEST_GUEST_READY_MARKER } from "@sbx/fc-client/testing";
import { describe, expect, it } from "vitest";
import { runCli } from "./cli/cli.ts";
import { createConfig } from "./config.ts";
import { Orchestrator } from "./orchestrator.ts";
import { childPids, networkSkipReason } from "./test-capabilities.ts";
import { testLaunchOptions } from "./test-launch-mode.ts";
import {
  mirrorToolsMissing,
  publishKernel,
  publishRelease,
  releaseTarball,
  startReleaseMirror,
} from "./test-release-mirror.ts";
import { templateFixture } from "./test-template-fixture.ts";

const VERSION = "v1.14.2";
const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker({ testGuest: true });
const skipReason = firecrackerSkip ?? networkSkipReason() ?? mirrorToolsMissing();
if (skipReason) console.log(`[orchestrator] setup-to-sandbox test skipped: ${skipReason}`);
const jailed = "jailerBin" in testLaunchOptions();
const GUEST_LINE = /^SBX-GUEST iter=\d+ sum=[0-9a-f]{8}$/;

describe.skipIf(skipReason !== undefined)(
  `sbx setup against a loopback mirror, then a template and a sandbox${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    it("runs a sandbox from the Firecracker and kernel that setup installed", async () => {
      const fixture = await templateFixture();
      const fdsBefore = readdirSync("/proc/self/fd").length;
      try {
        await using mirror = await startReleaseMirror();
        const guest = (await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") })).path;
        const jailer =
          process.env.JAILER_BIN && existsSync(process.env.JAILER_BIN) ? process.env.JAILER_BIN : "/bin/true";
        publishRelease(
          mirror,
          VERSION,
          "amd64",
          await releaseTarball({
            version: VERSION,
            arch: "amd64",
            binaries: { firecracker: firecrackerBin!, jailer },
          }),
        );
        publishKernel(mirror, "v1.14", "amd64", "6.1.141", await readFile(guest));
        const firecrackerRoot = join(fixture.dir, "firecracker");
        const kernelRoot = join(fixture.dir, "kernels");
        const out = { stdout: "", stderr: "" };
        const code = await runCli(
          [
            "setup",
            "--arch",
            "amd64",
            "--firecracker-dir",
            firecrackerRoot,
            "--kernel-dir",
            kernelRoot,
            "--release-url",
            mirror.releaseBaseUrl,
            "--kernel-bucket-url",
            mirror.kernelBucketUrl,
          ],
          {
            stdout: { write: (text: string) => (out.stdout += text) },
            stderr: { write: (text: string) => (out.stderr += text) },
            env: {},
          },
        );
        expect(out.stderr).toBe("");
        expect(code).toBe(0);

        const config = createConfig({
          stateDir: fixture.config.stateDir,
          busyboxDir: fixture.config.busyboxDir,
          firecrackerRoot,
          kernelRoot,
          firecrackerVersion: VERSION,
          kernelVersion: "6.1",
          // With a real jailer, the one setup installed next to Firecracker is found there (no JAILER_BIN).
          ...(jailed ? {} : { unjailed: true }),
        });
        await using orchestrator = await Orchestrator.open(config);
        const built = await orchestrator.buildTemplate({
          request: { name: "from-setup", ociLayout: fixture.layoutDir, memoryMib: 128, vcpuCount: 1 },
          readyMarker: TEST_GUEST_READY_MARKER,
        });
        expect(built.manifest.boot?.firecracker.version).toBe(VERSION);
        expect(built.manifest.jailed).toBe(jailed);
        const sandbox = await orchestrator.createSandbox({
          template: "from-setup",
          alive: GUEST_LINE,
          aliveTimeoutMs: 60_000,
        });
        expect(sandbox.firecracker.console.lines().some((line) => GUEST_LINE.test(line))).toBe(true);
        await sandbox.kill();
      } finally {
        await rm(fixture.dir, { recursive: true, force: true });
      }
      expect(childPids()).toEqual([]);
      expect(readdirSync("/proc/self/fd").length).toBe(fdsBefore);
    }, 180_000);
  },
);
