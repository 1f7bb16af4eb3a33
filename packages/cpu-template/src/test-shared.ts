// Firecracker's CPU-template schema, static templates (as custom JSON) and fingerprints, pinned in
// scripts/test-data-manifest.ts and put in .test-data/firecracker by `pnpm test-data`.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  firecrackerTestDataSkipReason,
  firecrackerTestDataSkipSuffix,
  firecrackerTestFile,
} from "../../../scripts/test-data.ts";
import { type Fingerprint, readFingerprintFile } from "./fingerprint.ts";

export const TEMPLATES_DIR = firecrackerTestFile("cpu-templates");
export const sharedSkipReason = firecrackerTestDataSkipReason();
/** Appended to the names of tests that read the data: the skip list then says why they skipped. */
export const sharedSkipSuffix = firecrackerTestDataSkipSuffix();

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
