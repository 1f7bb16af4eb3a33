import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { configureAndStart } from "../configure.ts";
import { FirecrackerLaunchError } from "../errors.ts";
import { launchFirecracker } from "../launcher.ts";
import { realFirecracker } from "./real-firecracker.ts";
import { buildTestGuest, TEST_GUEST_READY_MARKER } from "./tiny-guest.ts";
import { parseTestGuestCpuid, TEST_GUEST_CPUID_MAX, testGuestCpuidBootArg } from "./tiny-guest-cpuid.ts";

const { binary: firecrackerBin, skipReason } = realFirecracker({ testGuest: true });
if (skipReason) console.log(`[fc-client] test guest CPUID boot skipped: ${skipReason}`);

describe("the test guest's CPUID report", () => {
  it("asks for leaves in hex and parses the guest's lines", () => {
    expect(
      testGuestCpuidBootArg([
        { leaf: 7, subleaf: 0 },
        { leaf: 0x80000001, subleaf: 0 },
      ]),
    ).toBe("sbx.cpuid=7.0,80000001.0");
    const report = [
      "SBX-GUEST cpuid 00000007.00000001 eax=00000001 ebx=ffffffff ecx=00000000 edx=8000000a",
      "SBX-GUEST cpuid 7.0 eax=1 ebx=2 ecx=3 edx=4",
      // Two reports on one line: the console lost the newline between them.
      "SBX-GUEST cpuid 00000000.00000000 eax=0000001c ebx=68747541 ecx=444d4163 edx=69746e65SBX-GUEST cpuid 80000000.00000000 eax=80000021 ebx=00000000 ecx=00000000 edx=00000000",
      "SBX-GUEST iter=1 sum=ae0435bd",
    ];
    expect(parseTestGuestCpuid(report)).toEqual([
      { leaf: 7, subleaf: 1, eax: 1, ebx: 0xffffffff, ecx: 0, edx: 0x8000000a },
      { leaf: 0, subleaf: 0, eax: 0x1c, ebx: 0x68747541, ecx: 0x444d4163, edx: 0x69746e65 },
      { leaf: 0x80000000, subleaf: 0, eax: 0x80000021, ebx: 0, ecx: 0, edx: 0 },
    ]);
  });

  it("refuses what the guest cannot print: no leaves, too many, or not 32-bit", () => {
    const tooMany = Array.from({ length: TEST_GUEST_CPUID_MAX + 1 }, (_, leaf) => ({ leaf, subleaf: 0 }));
    for (const leaves of [[], tooMany, [{ leaf: 2 ** 32, subleaf: 0 }], [{ leaf: 1, subleaf: -1 }]]) {
      expect(() => testGuestCpuidBootArg(leaves)).toThrow(
        expect.objectContaining({ code: "INVALID_OPTIONS", constructor: FirecrackerLaunchError }),
      );
    }
  });

  it.skipIf(skipReason !== undefined)(
    `boots and prints the leaves it was asked for, with this host's vendor in leaf 0${skipReason ? ` (skipped: ${skipReason})` : ""}`,
    async () => {
      const dir = await mkdtemp(join(tmpdir(), "sbx-guest-cpuid-"));
      try {
        const guest = await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") });
        await using fc = await launchFirecracker({
          binary: firecrackerBin!,
          id: "sbx-guest-cpuid",
          logPath: join(dir, "firecracker.log"),
        });
        const leaves = [
          { leaf: 0, subleaf: 0 },
          { leaf: 1, subleaf: 0 },
          { leaf: 0x80000000, subleaf: 0 },
        ];
        await configureAndStart(fc.client, {
          "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
          "boot-source": {
            kernel_image_path: guest.path,
            boot_args: `console=ttyS0 ${testGuestCpuidBootArg(leaves)}`,
          },
        });
        await fc.waitForConsole(TEST_GUEST_READY_MARKER, { timeoutMs: 30_000 });
        const seen = parseTestGuestCpuid(fc.console.lines());
        expect(seen.map(({ leaf, subleaf }) => ({ leaf, subleaf }))).toEqual(leaves);
        // Leaf 0's vendor string (ebx, edx, ecx) is the host's: Firecracker passes it through.
        const vendor = Buffer.alloc(12);
        vendor.writeUInt32LE(seen[0]!.ebx, 0);
        vendor.writeUInt32LE(seen[0]!.edx, 4);
        vendor.writeUInt32LE(seen[0]!.ecx, 8);
        const hostVendor = /^vendor_id\s*:\s*(\S+)/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1];
        expect(vendor.toString("latin1")).toBe(hostVendor);
        expect(seen[0]!.eax).toBeGreaterThanOrEqual(1);
        expect(seen[2]!.eax).toBeGreaterThanOrEqual(0x80000001);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  );
});
