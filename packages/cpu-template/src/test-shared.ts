import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { type Fingerprint, readFingerprintFile } from "./fingerprint.ts";

export const TEMPLATES_DIR = resolve(import.meta.dirname, "../../../../shared/firecracker/cpu-templates");
export const sharedSkipReason = existsSync(join(TEMPLATES_DIR, "schema.json"))
  ? undefined
  : `Firecracker's CPU template files not found at ${TEMPLATES_DIR}`;

export const fingerprint = (name: string): Fingerprint =>
  readFingerprintFile(join(TEMPLATES_DIR, "fingerprints", `fingerprint_${name}host.json`));
export const customTemplates = (): [string, unknown][] =>
  readdirSync(join(TEMPLATES_DIR, "custom"))
    .filter((f) => f.endsWith(".json"))
    .map((f) => [f, JSON.parse(readFileSync(join(TEMPLATES_DIR, "custom", f), "utf8"))]);
export const allFingerprintNames = (): string[] =>
  readdirSync(join(TEMPLATES_DIR, "fingerprints")).map((f) =>
    f.replace(/^fingerprint_/, "").replace(/host\.json$/, ""),
  );
