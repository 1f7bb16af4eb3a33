import { accessSync, constants } from "node:fs";

/** The Firecracker binary tests may run (FIRECRACKER_BIN), or why they must skip. */
export interface RealFirecracker {
  /** The binary from FIRECRACKER_BIN, when tests can run it. */
  binary: string | undefined;
  /** Why tests that need it must skip (print it), or undefined when they can run: every unmet condition. */
  skipReason: string | undefined;
  /** Each unmet condition on its own, empty when tests can run. */
  unmet: string[];
  /**
   * The jailer from JAILER_BIN when it is executable and this process is root (the jailer needs root),
   * else undefined: tests then run Firecracker unjailed, and must say so explicitly (`unjailed: true`).
   */
  jailer: string | undefined;
  /** Why a jailed run is not possible here (JAILER_BIN unset, not executable, not root), or undefined. */
  jailerSkipReason: string | undefined;
}

function usable(path: string, mode: number): boolean {
  try {
    accessSync(path, mode);
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether tests can run a real Firecracker here: FIRECRACKER_BIN set to an executable, /dev/kvm usable
 * and, with `testGuest`, an x86_64 host (the tiny test guest is x86_64 only). Every condition is
 * checked, so a skip names all that is missing, not only the first. `files` adds named files a test
 * also needs (a kernel, a root filesystem): an unset one is reported with its variable's name.
 */
export function realFirecracker(
  options: {
    testGuest?: boolean;
    env?: Record<string, string | undefined>;
    files?: Record<string, string | undefined>;
  } = {},
): RealFirecracker {
  const binary = (options.env ?? process.env).FIRECRACKER_BIN || undefined;
  const unmet: string[] = [];
  if (!binary) unmet.push("FIRECRACKER_BIN not set");
  else if (!usable(binary, constants.X_OK)) unmet.push(`FIRECRACKER_BIN=${binary} is not executable`);
  if (options.testGuest && process.arch !== "x64") unmet.push("the tiny test guest is x86_64 only");
  if (!usable("/dev/kvm", constants.R_OK | constants.W_OK)) unmet.push("/dev/kvm is not usable by this user");
  for (const [variable, path] of Object.entries(options.files ?? {})) {
    if (!path) unmet.push(`${variable} not set`);
    else if (!usable(path, constants.R_OK)) unmet.push(`${variable}=${path} is not readable`);
  }
  const skipReason = unmet.length > 0 ? unmet.join("; ") : undefined;
  const jailerPath = (options.env ?? process.env).JAILER_BIN || undefined;
  const jailerSkipReason = !jailerPath
    ? "JAILER_BIN not set"
    : !usable(jailerPath, constants.X_OK)
      ? `JAILER_BIN=${jailerPath} is not executable`
      : process.getuid?.() !== 0
        ? "the jailer needs root"
        : undefined;
  return {
    binary: skipReason ? undefined : binary,
    skipReason,
    unmet,
    jailer: jailerSkipReason ? undefined : jailerPath,
    jailerSkipReason,
  };
}
