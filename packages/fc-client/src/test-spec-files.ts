// Firecracker's spec files, vm-config files and docs, pinned in scripts/test-data-manifest.ts and put in
// .test-data/firecracker by `pnpm test-data` (test data, never shipped).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parse } from "yaml";
import {
  firecrackerTestDataSkipReason,
  firecrackerTestDataSkipSuffix,
  firecrackerTestFile,
} from "../../../scripts/test-data.ts";

export const sharedSkipReason = firecrackerTestDataSkipReason();
/** Appended to the names of tests that read the data: the skip list then says why they skipped. */
export const sharedSkipSuffix = firecrackerTestDataSkipSuffix();
export const apiSpecDir = firecrackerTestFile("api");
export const vmConfigDir = firecrackerTestFile("vm-config");
export const firecrackerDocsDir = firecrackerTestFile("docs");

export interface SpecSchema {
  $ref?: string;
  type?: string;
  enum?: unknown[];
  required?: string[];
  properties?: Record<string, SpecSchema>;
  items?: SpecSchema;
  minimum?: number;
  maximum?: number;
  example?: unknown;
}
export interface SpecOperation {
  operationId: string;
  parameters?: { name: string; in: string; schema?: SpecSchema }[];
  responses: Record<string, { schema?: SpecSchema }>;
}
export interface Spec {
  paths: Record<string, Record<string, SpecOperation>>;
  definitions: Record<string, SpecSchema>;
}

export function readSpec(version: string): Spec {
  return parse(readFileSync(join(apiSpecDir, `firecracker-v${version}.yaml`), "utf8")) as Spec;
}

export function specOperations(
  spec: Spec,
): { operationId: string; method: string; path: string; op: SpecOperation }[] {
  return Object.entries(spec.paths).flatMap(([path, methods]) =>
    Object.entries(methods).map(([method, op]) => ({
      operationId: op.operationId,
      method: method.toUpperCase(),
      path,
      op,
    })),
  );
}

export const refName = (schema: SpecSchema | undefined) => schema?.$ref?.replace("#/definitions/", "");
