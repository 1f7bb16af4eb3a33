// The normalized template of this host + an older host of the same vendor (Cascade Lake or Milan), applied
// to a real Firecracker with PUT /cpu-config: the tiny test guest executes CPUID for every leaf the
// template modifies and prints the registers, and every bit the template fixes reads back as fixed.
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { configureAndStart, launchFirecracker } from "@sbx/fc-client";
import {
  buildTestGuest,
  parseTestGuestCpuid,
  realFirecracker,
  TEST_GUEST_READY_MARKER,
  type TestGuestCpuid,
  testGuestCpuidBootArg,
} from "@sbx/fc-client/testing";
import { describe, expect, it } from "vitest";
import { firecrackerTestDataSkipReason, firecrackerTestFile } from "../../../scripts/test-data.ts";

const sharedSkipReason = firecrackerTestDataSkipReason();
const fingerprint = (name: string): Fingerprint =>
  readFingerprintFile(
    join(firecrackerTestFile("cpu-templates"), "fingerprints", `fingerprint_${name}host.json`),
  );

import {
  type CustomCpuTemplate,
  type Fingerprint,
  hostFingerprint,
  normalizeFleet,
  readFingerprintFile,
} from "@sbx/cpu-template";

const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker({ testGuest: true });
/** PVM (kvm_pvm) runs guests without VMX/SVM; it decides some CPUID feature bits itself. */
const pvm = existsSync("/sys/module/kvm_pvm");
const skipReason = [firecrackerSkip, sharedSkipReason].filter(Boolean).join("; ") || undefined;
if (skipReason) console.log(`[cpu-template] real-Firecracker template test skipped: ${skipReason}`);

type Register = "eax" | "ebx" | "ecx" | "edx";
interface FixedBit {
  leaf: number;
  subleaf: number;
  flags: number;
  register: Register;
  bit: number;
  value: 0 | 1;
}

/** Every bit a template's CPUID modifiers fix to 0 or 1, read from the bitmaps here (MSB first). */
function fixedBits(template: CustomCpuTemplate): FixedBit[] {
  return (template.cpuid_modifiers ?? []).flatMap((modifier) =>
    modifier.modifiers.flatMap(({ register, bitmap }) => {
      const bits = bitmap.replace(/^0b/, "").replaceAll("_", "");
      expect(bits).toHaveLength(32);
      return [...bits].flatMap((char, index) =>
        char === "x"
          ? []
          : [
              {
                leaf: Number(modifier.leaf),
                subleaf: Number(modifier.subleaf),
                flags: modifier.flags,
                register: register as Register,
                bit: 31 - index,
                value: (char === "1" ? 1 : 0) as 0 | 1,
              },
            ],
      );
    }),
  );
}

const describeBit = (f: FixedBit) =>
  `${f.leaf.toString(16)}.${f.subleaf} ${f.register} bit ${f.bit}=${f.value}`;

/** A template that fixes exactly `bits`, written bit by bit (independent of normalizeFleet). */
function templateOf(bits: readonly FixedBit[]): CustomCpuTemplate {
  const byLeaf = new Map<string, Map<Register, string[]>>();
  for (const f of bits) {
    const key = `${f.leaf}.${f.subleaf}`;
    const registers = byLeaf.get(key) ?? new Map<Register, string[]>();
    byLeaf.set(key, registers);
    const chars = registers.get(f.register) ?? Array<string>(32).fill("x");
    registers.set(f.register, chars);
    chars[31 - f.bit] = String(f.value);
  }
  return {
    cpuid_modifiers: [...byLeaf].map(([key, registers]) => {
      const [leaf, subleaf] = key.split(".").map(Number) as [number, number];
      return {
        leaf: `0x${leaf.toString(16)}`,
        subleaf: `0x${subleaf.toString(16)}`,
        flags: bits.find((f) => f.leaf === leaf && f.subleaf === subleaf)!.flags,
        modifiers: [...registers].map(([register, chars]) => ({ register, bitmap: `0b${chars.join("")}` })),
      };
    }),
  };
}

const seenBit = (seen: TestGuestCpuid[], fixed: FixedBit): number => {
  const leaf = seen.find((s) => s.leaf === fixed.leaf && s.subleaf === fixed.subleaf);
  expect(leaf, `the guest printed leaf ${fixed.leaf.toString(16)}.${fixed.subleaf}`).toBeDefined();
  return (leaf![fixed.register] >>> fixed.bit) & 1;
};

/** Boots the test guest (under `template` when given) and returns the CPUID leaves it printed. */
async function guestCpuid(
  dir: string,
  name: string,
  leaves: { leaf: number; subleaf: number }[],
  template: CustomCpuTemplate | undefined,
): Promise<TestGuestCpuid[]> {
  const guest = await buildTestGuest({ outDir: join(tmpdir(), "sbx-test-guest-cache") });
  await using fc = await launchFirecracker({
    binary: firecrackerBin!,
    id: `sbx-cpu-template-${name}`,
    logPath: join(dir, `${name}.log`),
  });
  await configureAndStart(fc.client, {
    "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
    ...(template ? { "cpu-config": template } : {}),
    "boot-source": {
      kernel_image_path: guest.path,
      boot_args: `console=ttyS0 ${testGuestCpuidBootArg(leaves)}`,
    },
  });
  await fc.waitForConsole(TEST_GUEST_READY_MARKER, { timeoutMs: 30_000 });
  expect((await fc.client.describeInstance()).state).toBe("Running");
  return parseTestGuestCpuid(fc.console.lines());
}

describe.skipIf(skipReason !== undefined)(
  `a normalized template on a real Firecracker${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    it("is accepted by PUT /cpu-config, and the guest's CPUID shows every bit it fixes", async () => {
      const host = hostFingerprint();
      // Snapshots never move between vendors, so the fleet peer is of the host's own vendor.
      const peer = fingerprint(host.vendor === "AuthenticAMD" ? "AMD_MILAN_6.1" : "INTEL_CASCADELAKE_6.1");
      const template = normalizeFleet([host, peer]);
      const fixed = fixedBits(template);
      expect(fixed.length).toBeGreaterThan(0);
      const leaves = template.cpuid_modifiers!.map((m) => ({
        leaf: Number(m.leaf),
        subleaf: Number(m.subleaf),
      }));
      const dir = await mkdtemp(join(tmpdir(), "sbx-cpu-template-fc-"));
      try {
        const bare = await guestCpuid(dir, "bare", leaves, undefined);
        const templated = await guestCpuid(dir, "templated", leaves, template);
        const wrong = fixed.filter((f) => seenBit(templated, f) !== f.value);
        // A PVM host (as on the CI) keeps some feature bits on whatever the guest's CPUID says (seen:
        // SSE3, FSGSBASE). To tell that from a wrong template, the bits that came out wrong are asked
        // for again, alone, in a template built here bit by bit: what stays wrong there is the host's.
        const probe = wrong.length > 0 ? await guestCpuid(dir, "probe", leaves, templateOf(wrong)) : [];
        const forcedByHost = wrong.filter((f) => seenBit(probe, f) !== f.value);
        if (forcedByHost.length > 0)
          console.log(
            `[cpu-template] this host keeps ${forcedByHost.length} CPUID bits whatever the template says: ${forcedByHost.map(describeBit).join(", ")}`,
          );
        expect(wrong.filter((f) => !forcedByHost.includes(f)).map(describeBit)).toEqual([]);
        expect(forcedByHost.length === 0 || pvm).toBe(true); // a VMX/SVM KVM host applies every bit
        // Not vacuous: without the template the guest sees some of those bits otherwise, and with it
        // they read as the template says.
        const changed = fixed.filter((f) => seenBit(bare, f) !== f.value && !forcedByHost.includes(f));
        console.log(
          `[cpu-template] the template changed ${changed.length} CPUID bits: ${changed.map(describeBit).join(", ")}`,
        );
        expect(changed.length).toBeGreaterThan(0);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  },
);
