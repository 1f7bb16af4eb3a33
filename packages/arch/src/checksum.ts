import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readFile } from "node:fs/promises";
import { basename } from "node:path";
import { z } from "zod";
import { ArchError } from "./errors.ts";

/** A sha256 digest: 64 hex digits, trimmed and lower-cased. */
export const sha256HexSchema = z
  .string()
  .trim()
  .toLowerCase()
  .regex(/^[0-9a-f]{64}$/, "a sha256 digest is 64 hex digits");

/** The sha256 of a file, in hex, read as a stream. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/**
 * Reads a sha256 sidecar in bare-hex form (`<hex>`) or `sha256sum` form (`<hex>  name` or
 * `<hex> *name`). In `sha256sum` form the named file must be the artifact, so a sidecar copied
 * from another file is caught.
 */
export function parseSha256Sidecar(text: string, artifactName: string): string {
  const lines = text.split("\n").filter((line) => line.trim() !== "");
  const line = lines[0]?.trim() ?? "";
  const match = /^([0-9a-fA-F]{64})(?:\s+\*?(.+))?$/.exec(line);
  const digest = match?.[1];
  if (lines.length !== 1 || !match || digest === undefined) {
    throw new ArchError(
      "ARTIFACT_CHECKSUM_MISSING",
      `the sha256 sidecar for ${artifactName} is not "<64 hex digits>" or "<64 hex digits>  ${artifactName}"`,
      { details: { artifactName } },
    );
  }
  const named = match[2]?.trim();
  if (named !== undefined && basename(named) !== artifactName) {
    throw new ArchError(
      "ARTIFACT_CHECKSUM_MISMATCH",
      `the sha256 sidecar names "${named}", not ${artifactName}; it belongs to another file`,
      { details: { artifactName, named } },
    );
  }
  return digest.toLowerCase();
}

/** How an artifact's checksum is verified: a `.sha256` sidecar file or a pinned digest. */
export type ChecksumRule =
  /** `{path}.sha256` must exist and match, unless `allowUnverified` (then a missing sidecar is accepted). */
  | { kind: "sidecar"; allowUnverified?: boolean }
  /** The artifact must have exactly this digest. */
  | { kind: "pinned"; sha256: string };

/** A file's sha256 and whether a rule verified it. */
export interface ChecksumResult {
  sha256: string;
  verified: boolean;
}

/** Verifies `path` against its sidecar or a pinned digest, every time it is called. */
export async function verifyChecksum(path: string, rule: ChecksumRule): Promise<ChecksumResult> {
  let expected: string | undefined;
  if (rule.kind === "pinned") {
    const parsed = sha256HexSchema.safeParse(rule.sha256);
    if (!parsed.success) {
      throw new ArchError("INVALID_OPTIONS", `pinned sha256 "${rule.sha256}" is not 64 hex digits`);
    }
    expected = parsed.data;
  } else {
    const sidecar = `${path}.sha256`;
    try {
      expected = parseSha256Sidecar(await readFile(sidecar, "utf8"), basename(path));
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code !== "ENOENT") throw cause;
      if (!rule.allowUnverified) {
        throw new ArchError(
          "ARTIFACT_CHECKSUM_MISSING",
          `${sidecar} does not exist, so ${path} cannot be verified; write its sha256 there (sha256sum ${basename(path)} > ${basename(sidecar)}) or pass allowUnverified to accept it unchecked`,
          { cause, details: { path, sidecar } },
        );
      }
    }
  }
  const actual = await sha256File(path);
  if (expected !== undefined && actual !== expected) {
    throw new ArchError(
      "ARTIFACT_CHECKSUM_MISMATCH",
      `${path} has sha256 ${actual} but ${rule.kind === "pinned" ? "the pinned digest" : "its sidecar"} says ${expected}; the file is corrupt or was replaced`,
      { details: { path, expected, actual } },
    );
  }
  return { sha256: actual, verified: expected !== undefined };
}
