// Locates Firecracker's spec files, vm-config files and docs in ../shared (test data, never shipped).
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parse } from "yaml";

export const FIRECRACKER_SHARED_DIR = resolve(import.meta.dirname, "../../../../shared/firecracker");
export const sharedSkipReason = existsSync(join(FIRECRACKER_SHARED_DIR, "api"))
  ? undefined
  : `Firecracker spec files not found at ${FIRECRACKER_SHARED_DIR}`;

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
  return parse(
    readFileSync(join(FIRECRACKER_SHARED_DIR, "api", `firecracker-v${version}.yaml`), "utf8"),
  ) as Spec;
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
