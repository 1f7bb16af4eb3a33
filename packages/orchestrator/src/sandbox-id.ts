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
 * Resolves what a user typed to one item: an exact id match wins, otherwise the prefix must match
 * exactly one id. Ambiguous prefixes list every match.
 */
export function findByIdPrefix<T extends { id: string }>(
  prefix: string,
  items: Iterable<T>,
  what = "sandbox",
): T {
  const wanted = prefix.trim();
  if (wanted === "") {
    throw new OrchestratorError("INVALID_ID", `give a ${what} id or a unique prefix of one`);
  }
  const byId = new Map<string, T>();
  for (const item of items) if (!byId.has(item.id)) byId.set(item.id, item);
  const exact = byId.get(wanted);
  if (exact !== undefined) return exact;
  const matches = [...byId.values()]
    .filter((item) => item.id.startsWith(wanted))
    .sort((a, b) => (a.id < b.id ? -1 : 1));
  const [only, ...others] = matches;
  if (only !== undefined && others.length === 0) return only;
  if (only === undefined) {
    throw new OrchestratorError(
      "SANDBOX_NOT_FOUND",
      `no ${what} id starts with "${wanted}"${byId.size === 0 ? ` (there are no ${what}es)` : ""}; list them with \`sbx ${what} list\``,
      { details: { prefix: wanted } },
    );
  }
  const ids = matches.map((item) => item.id);
  throw new OrchestratorError(
    "ID_PREFIX_AMBIGUOUS",
    `"${wanted}" matches ${ids.length} ${what}es: ${ids.join(", ")}; type more of the id`,
    { details: { prefix: wanted, matches: ids } },
  );
}

/** `findByIdPrefix` over bare ids. */
export function resolveIdPrefix(prefix: string, ids: Iterable<string>, what = "sandbox"): string {
  return findByIdPrefix(
    prefix,
    Array.from(ids, (id) => ({ id })),
    what,
  ).id;
}
