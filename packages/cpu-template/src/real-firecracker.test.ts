// The normalized template of this host + an older host of the same vendor (Cascade Lake or Milan), applied to a real Firecracker with
// PUT /cpu-config: Firecracker accepts it and the test guest boots under it.
import { tmpdir } from "node:os";
import { join } from "node:path";
import { configureAndStart, launchFirecracker } from "@sbx/fc-client";
import { buildTestGuest, realFirecracker, TEST_GUEST_READY_MARKER } from "@sbx/fc-client/testing";
import { describe, expect, it } from "vitest";
import { hostFingerprint } from "./host.ts";
import { normalizeFleet } from "./normalize.ts";
import { fingerprint, sharedSkipReason } from "./test-shared.ts";

const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker({ testGuest: true });
const skipReason = firecrackerSkip ?? sharedSkipReason;
if (skipReason) console.log(`[cpu-template] real-Firecracker template test skipped: ${skipReason}`);

describe.skipIf(skipReason !== undefined)(
  `a normalized template on a real Firecracker${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    it("is accepted by PUT /cpu-config and the guest boots under it", async () => {
      const host = hostFingerprint();
      // Snapshots never move between vendors, so the fleet peer is of the host's own vendor.
      const peer = fingerprint(host.vendor === "AuthenticAMD" ? "AMD_MILAN_6.1" : "INTEL_CASCADELAKE_6.1");
      const template = normalizeFleet([host, peer]);
      expect(template.cpuid_modifiers!.length).toBeGreaterThan(0);
      const guest = await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") });
      await using fc = await launchFirecracker({
        binary: firecrackerBin!,
        id: "sbx-cpu-template",
        logPath: join(tmpdir(), "sbx-cpu-template-fc.log"),
      });
      await configureAndStart(fc.client, {
        "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
        "cpu-config": template,
        "boot-source": { kernel_image_path: guest.path, boot_args: "console=ttyS0" },
      });
      await fc.waitForConsole(TEST_GUEST_READY_MARKER, { timeoutMs: 10_000 });
      expect((await fc.client.describeInstance()).state).toBe("Running");
    });
  },
);
