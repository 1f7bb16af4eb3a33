// What the tiny test guest's CPUID looks like from inside: `sbx.cpuid=` on its command line makes it
// execute CPUID for each listed leaf before its ready marker and print the four registers, so a test
// can check a CPU template against what the guest actually sees.
import { z } from "zod";
import { FirecrackerLaunchError } from "../errors.ts";

/** The guest prints at most this many leaves (its parser stops there). */
export const TEST_GUEST_CPUID_MAX = 64;

/**
 * `SBX-GUEST cpuid <leaf>.<subleaf> eax=<hex> ebx=<hex> ecx=<hex> edx=<hex>`, 8 hex digits each. Not
 * anchored: Firecracker's serial console now and then loses a newline between two of these lines
 * (seen with v1.14.2), so the report is scanned, not split into lines.
 */
export const TEST_GUEST_CPUID_PATTERN: RegExp =
  /SBX-GUEST cpuid ([0-9a-f]{8})\.([0-9a-f]{8}) eax=([0-9a-f]{8}) ebx=([0-9a-f]{8}) ecx=([0-9a-f]{8}) edx=([0-9a-f]{8})/g;

const u32 = z.number().int().min(0).max(0xffff_ffff);
const leavesSchema = z
  .array(z.object({ leaf: u32, subleaf: u32 }))
  .min(1)
  .max(TEST_GUEST_CPUID_MAX);

/** A CPUID leaf and subleaf. */
export interface CpuidLeaf {
  leaf: number;
  subleaf: number;
}

/** The registers the tiny test guest read for one CPUID leaf, as the guest sees them. */
export interface TestGuestCpuid extends CpuidLeaf {
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

/** The boot argument that makes the guest print `leaves`, e.g. `sbx.cpuid=1.0,7.0`. */
export function testGuestCpuidBootArg(leaves: readonly CpuidLeaf[]): string {
  const parsed = leavesSchema.safeParse(leaves);
  if (!parsed.success)
    throw new FirecrackerLaunchError(
      "INVALID_OPTIONS",
      `CPUID leaves for the test guest: 1 to ${TEST_GUEST_CPUID_MAX} pairs of 32-bit integers (${z.prettifyError(parsed.error)})`,
    );
  return `sbx.cpuid=${parsed.data.map(({ leaf, subleaf }) => `${leaf.toString(16)}.${subleaf.toString(16)}`).join(",")}`;
}

/** Every CPUID report in the guest's console output, in the order printed. */
export function parseTestGuestCpuid(lines: readonly string[]): TestGuestCpuid[] {
  return [...lines.join("\n").matchAll(TEST_GUEST_CPUID_PATTERN)].map((match) => {
    const [leaf, subleaf, eax, ebx, ecx, edx] = match.slice(1).map((hex) => Number.parseInt(hex, 16)) as [
      number,
      number,
      number,
      number,
      number,
      number,
    ];
    return { leaf, subleaf, eax, ebx, ecx, edx };
  });
}
