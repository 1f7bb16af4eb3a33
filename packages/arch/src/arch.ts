import { z } from "zod";
import { ArchError } from "./errors.ts";
import type { Logger } from "./logger.ts";

/** The zod schema of a target arch: "amd64" or "arm64" (Go's names, as Firecracker's artifacts use them). */
export const archSchema = z.enum(["amd64", "arm64"]);
/** A target arch: "amd64" or "arm64". */
export type Arch = z.infer<typeof archSchema>;

/** Every arch sbx runs on. */
export const SUPPORTED_ARCHES: readonly Arch[] = archSchema.options;

// A Map, not an object literal: a lookup of "constructor" or "__proto__" must miss, not find
// Object.prototype's members.
const ALIASES: ReadonlyMap<string, Arch> = new Map([
  ["amd64", "amd64"],
  ["x86_64", "amd64"],
  ["x86-64", "amd64"],
  ["x64", "amd64"],
  ["arm64", "arm64"],
  ["aarch64", "arm64"],
  ["arm64/v8", "arm64"],
  ["armv8", "arm64"],
]);

/** Every spelling normalizeArch accepts, for error messages and docs. */
export const ACCEPTED_ARCH_NAMES: readonly string[] = [...ALIASES.keys()];

/** How `normalizeArch` treats an empty or unknown value. */
export interface NormalizeArchOptions {
  /** Throw `UNKNOWN_ARCH` instead of warning and falling back to the host arch. */
  strict?: boolean;
  logger?: Logger;
  /** The arch used for empty and (non-strict) unknown values; defaults to `hostArch()`. */
  fallback?: Arch;
}

// Warn once per distinct value and logger, so a bad TARGET_ARCH read on every request does not flood logs.
const warnedValues = new WeakMap<Logger, Set<string>>();

function warnOnce(logger: Logger | undefined, value: string, fallback: Arch): void {
  if (!logger?.warn) return;
  let seen = warnedValues.get(logger);
  if (!seen) {
    seen = new Set();
    warnedValues.set(logger, seen);
  }
  if (seen.has(value)) return;
  seen.add(value);
  logger.warn(
    { value, fallback, accepted: ACCEPTED_ARCH_NAMES },
    `unknown architecture "${value}", using the host architecture ${fallback}`,
  );
}

/**
 * Maps the many spellings of an architecture to `amd64` or `arm64`. Empty means "the host".
 * Unknown values fall back to the host arch with a warning (as the Go orchestrator did), or throw
 * `UNKNOWN_ARCH` with `{ strict: true }`.
 */
export function normalizeArch(value: string | undefined | null, options: NormalizeArchOptions = {}): Arch {
  const key = (value ?? "").trim().toLowerCase();
  if (key === "") return options.fallback ?? hostArch();
  const arch = ALIASES.get(key);
  if (arch) return arch;
  if (options.strict) {
    throw new ArchError(
      "UNKNOWN_ARCH",
      `unknown architecture "${value}"; use one of: ${ACCEPTED_ARCH_NAMES.join(", ")}`,
      { details: { value } },
    );
  }
  const fallback = options.fallback ?? hostArch();
  warnOnce(options.logger, key, fallback);
  return fallback;
}

const NODE_ARCHES: ReadonlyMap<string, Arch> = new Map([
  ["x64", "amd64"],
  ["arm64", "arm64"],
]);

/** The arch of the running process. `nodeArch` exists for tests; it defaults to `process.arch`. */
export function hostArch(nodeArch: string = process.arch): Arch {
  const arch = NODE_ARCHES.get(nodeArch);
  if (!arch) {
    throw new ArchError(
      "UNSUPPORTED_HOST_ARCH",
      `this host's architecture "${nodeArch}" is not supported; Firecracker runs on x86_64 and aarch64 only`,
      { details: { nodeArch } },
    );
  }
  return arch;
}

/** Reads `TARGET_ARCH`; unset or empty means the host arch. */
export function targetArchFromEnv(
  env: Readonly<Record<string, string | undefined>> = process.env,
  options: NormalizeArchOptions = {},
): Arch {
  return normalizeArch(env.TARGET_ARCH, options);
}
