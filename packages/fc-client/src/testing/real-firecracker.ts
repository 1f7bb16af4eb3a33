import { accessSync, constants } from "node:fs";

export interface RealFirecracker {
  /** The binary from FIRECRACKER_BIN, when tests can run it. */
  binary: string | undefined;
  /** Why tests that need it must skip (print it), or undefined when they can run. */
  skipReason: string | undefined;
}

/**
 * Whether tests can run a real Firecracker here: FIRECRACKER_BIN set, /dev/kvm usable and, with
 * `testGuest`, an x86_64 host (the tiny test guest is x86_64 only).
 */
export function realFirecracker(
  options: { testGuest?: boolean; env?: Record<string, string | undefined> } = {},
): RealFirecracker {
  const binary = (options.env ?? process.env).FIRECRACKER_BIN || undefined;
  let skipReason: string | undefined;
  if (!binary) skipReason = "FIRECRACKER_BIN not set";
  else if (options.testGuest && process.arch !== "x64") skipReason = "the tiny test guest is x86_64 only";
  else {
    try {
      accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    } catch {
      skipReason = "/dev/kvm is not usable by this user";
    }
  }
  return { binary: skipReason ? undefined : binary, skipReason };
}
