// The whole flow with a real Linux kernel, for real-KVM hosts: SBX_TEST_KERNEL (an uncompressed vmlinux
// on x86_64, an Image on aarch64). The rootfs is built here from an OCI layout with sbx's busybox init;
// the template is provisioned, snapshotted at the init's ready line, and every sandbox must answer
// ping on the guest address inside its own network namespace, also after a pause and resume. On PVM
// machines like the CI's a stock kernel does not finish booting, so this runs only where the variable is set.
import { existsSync, readdirSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { realFirecracker } from "@sbx/fc-client/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCommand } from "./exec.ts";
import { listNetworkNamespaces } from "./network.ts";
import { Orchestrator } from "./orchestrator.ts";
import type { Sandbox } from "./sandbox.ts";
import { childPids, networkSkipReason } from "./test-capabilities.ts";
import { type TemplateFixture, templateFixture, testResolver } from "./test-template-fixture.ts";

const kernel = process.env.SBX_TEST_KERNEL;
// Every unmet condition is named, not only the first.
const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker({
  files: { SBX_TEST_KERNEL: kernel },
});
const skipReason =
  [firecrackerSkip, networkSkipReason()].filter((reason) => reason !== undefined).join("; ") || undefined;
if (skipReason) console.log(`[orchestrator] real-Linux end-to-end test skipped: ${skipReason}`);

async function answersPing(sandbox: Sandbox, address: string): Promise<boolean> {
  const namespace = sandbox.networkNamespace;
  if (!namespace) return false;
  try {
    await runCommand(["ip", "netns", "exec", namespace, "busybox", "ping", "-c", "1", "-W", "3", address], {
      timeoutMs: 10_000,
    });
    return true;
  } catch {
    return false;
  }
}

describe.skipIf(skipReason !== undefined)(
  `a real Linux guest through the orchestrator${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let fixture: TemplateFixture;
    let orchestrator: Orchestrator;
    let before: { children: number[]; namespaces: string[] };

    beforeAll(async () => {
      expect(existsSync(kernel as string)).toBe(true);
      fixture = await templateFixture({ firecrackerBin: firecrackerBin as string });
      before = { children: childPids(), namespaces: await listNetworkNamespaces() };
      orchestrator = await Orchestrator.open(fixture.config);
      await orchestrator.buildTemplate({
        request: {
          name: "linux",
          ociLayout: fixture.layoutDir,
          memoryMib: 256,
          vcpuCount: 1,
          provisionScript: "echo provisioned > /etc/provisioned\n",
        },
        resolver: testResolver(kernel as string, firecrackerBin),
      });
    }, 600_000);

    afterAll(async () => {
      await orchestrator?.close();
      if (fixture) await rm(fixture.dir, { recursive: true, force: true });
    });

    it("starts sandboxes that answer on the guest address in their own namespaces; pause and resume", async () => {
      const guest = fixture.config.guestAddress;
      const sandboxes = await Promise.all(
        [0, 1, 2].map(() => orchestrator.createSandbox({ template: "linux", alive: false })),
      );
      try {
        for (const sandbox of sandboxes) expect(await answersPing(sandbox, guest)).toBe(true);
        const paused = await sandboxes[0]!.pause();
        const resumed = await orchestrator.createSandbox({ template: "linux", from: paused, alive: false });
        try {
          expect(await answersPing(resumed, guest)).toBe(true);
        } finally {
          await resumed.kill();
        }
      } finally {
        await Promise.all(sandboxes.map((s) => s.kill()));
      }
      expect(childPids()).toEqual(before.children);
      // Only namespaces that appeared count: other test files create and remove their own meanwhile.
      expect((await listNetworkNamespaces()).filter((name) => !before.namespaces.includes(name))).toEqual([]);
      expect(readdirSync(join(fixture.config.stateDir, "sandboxes"))).toEqual([]);
    }, 300_000);
  },
);
