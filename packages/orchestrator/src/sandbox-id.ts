import { randomBytes } from "node:crypto";
import { z } from "zod";
import { OrchestratorError } from "./errors.ts";

/** Sandbox ids are path segments and namespace names: lower-case letters, digits and dashes. */
export const sandboxIdSchema = z
  .string()
  .regex(/^[a-z0-9][a-z0-9-]{0,47}$/, "a sandbox id is 1-48 of a-z 0-9 - and starts with a letter or digit");

/** A new random id: 12 hex digits (48 bits), short enough to type a prefix of. */
export function newSandboxId(): string {
  return randomBytes(6).toString("hex");
}

/**
 * Resolves what a user typed to one id: an exact match wins, otherwise the prefix must match exactly
 * one id. Ambiguous prefixes list every match.
 */
export function resolveIdPrefix(prefix: string, ids: Iterable<string>, what = "sandbox"): string {
  const wanted = prefix.trim();
  if (wanted === "") {
    throw new OrchestratorError("INVALID_ID", `give a ${what} id or a unique prefix of one`);
  }
  const all = [...new Set(ids)];
  if (all.includes(wanted)) return wanted;
  const matches = all.filter((id) => id.startsWith(wanted)).sort();
  if (matches.length === 1) return matches[0]!;
  if (matches.length === 0) {
    throw new OrchestratorError(
      "SANDBOX_NOT_FOUND",
      `no ${what} id starts with "${wanted}"${all.length === 0 ? ` (there are no ${what}es)` : ""}; list them with \`sbx ${what} list\``,
      { details: { prefix: wanted } },
    );
  }
  throw new OrchestratorError(
    "ID_PREFIX_AMBIGUOUS",
    `"${wanted}" matches ${matches.length} ${what}es: ${matches.join(", ")}; type more of the id`,
    { details: { prefix: wanted, matches } },
  );
}
