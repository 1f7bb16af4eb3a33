import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { OPERATIONS, type OperationId, type OperationSpec } from "./operations.ts";
import { definitionSchemas, fullVmConfigurationSchema } from "./schemas.ts";
import {
  firecrackerDocsDir,
  readSpec,
  refName,
  type SpecSchema,
  sharedSkipReason,
  sharedSkipSuffix,
  specOperations,
  vmConfigDir,
} from "./test-spec-files.ts";

if (sharedSkipReason) console.log(`[fc-client] spec-walk tests skipped: ${sharedSkipReason}`);

// A value of the spec's type that satisfies its constraints, to build minimal valid payloads.
function sample(spec: SpecSchema, definitions: Record<string, SpecSchema>): unknown {
  const ref = refName(spec);
  if (ref) return sample(definitions[ref] as SpecSchema, definitions);
  if (spec.enum) return spec.enum[0];
  switch (spec.type) {
    case "integer":
      return spec.minimum ?? 1;
    case "boolean":
      return true;
    case "array":
      return [];
    case "object": {
      const out: Record<string, unknown> = {};
      for (const field of spec.required ?? [])
        out[field] = sample(spec.properties?.[field] ?? {}, definitions);
      return out;
    }
    default:
      return "x";
  }
}

const unwrap = (schema: z.ZodType): z.ZodType =>
  schema instanceof z.ZodOptional || schema instanceof z.ZodNullable
    ? unwrap(schema.unwrap() as z.ZodType)
    : schema;

describe.skipIf(sharedSkipReason !== undefined)(`the v1.16.1 spec, walked${sharedSkipSuffix}`, () => {
  const spec = sharedSkipReason ? undefined : readSpec("1.16.1");

  it("has a client operation for every path × method, with the spec's method, path and models", () => {
    const operations = specOperations(spec!);
    expect(operations.length).toBeGreaterThan(30);
    for (const { operationId, method, path, op } of operations) {
      const ours = (OPERATIONS as Record<string, OperationSpec>)[operationId];
      expect(ours, `operation ${operationId}`).toBeDefined();
      expect(`${ours!.method} ${ours!.path}`, operationId).toBe(`${method} ${path}`);
      const bodyParam = op.parameters?.find((p) => p.in === "body");
      expect(ours!.body?.definition, `${operationId} body`).toBe(refName(bodyParam?.schema));
      const ok = op.responses["200"]?.schema;
      expect(ours!.response?.definition, `${operationId} response`).toBe(
        ok ? (refName(ok) ?? "object") : undefined,
      );
    }
    expect(Object.keys(OPERATIONS).sort()).toEqual(operations.map((o) => o.operationId).sort());
  });

  it("has a schema for every definition, with the same fields, required fields and enums", () => {
    expect(Object.keys(definitionSchemas).sort()).toEqual(Object.keys(spec!.definitions).sort());
    for (const [name, definition] of Object.entries(spec!.definitions)) {
      const schema = definitionSchemas[name as keyof typeof definitionSchemas] as z.ZodType;
      if (definition.enum) {
        expect((schema as z.ZodEnum).options, name).toEqual(definition.enum);
        continue;
      }
      if (!(schema instanceof z.ZodObject)) {
        expect(name).toBe("MmdsContentsObject");
        continue;
      }
      const shape = schema.shape as Record<string, z.ZodType>;
      expect(Object.keys(shape).sort(), `${name} fields`).toEqual(
        Object.keys(definition.properties ?? {}).sort(),
      );
      const required = Object.keys(shape).filter((field) => !shape[field]!.safeParse(undefined).success);
      expect(required.sort(), `${name} required`).toEqual([...(definition.required ?? [])].sort());
      for (const [field, property] of Object.entries(definition.properties ?? {})) {
        const fieldSchema = unwrap(shape[field]!);
        const ref = refName(property);
        const enumValues = property.enum ?? (ref ? spec!.definitions[ref]?.enum : undefined);
        if (enumValues) expect((fieldSchema as z.ZodEnum).options, `${name}.${field}`).toEqual(enumValues);
        if (property.minimum !== undefined) {
          expect(fieldSchema.safeParse(property.minimum).success, `${name}.${field} = minimum`).toBe(true);
          expect(fieldSchema.safeParse(property.minimum - 1).success, `${name}.${field} < minimum`).toBe(
            false,
          );
        }
        if (property.maximum !== undefined) {
          expect(fieldSchema.safeParse(property.maximum).success, `${name}.${field} = maximum`).toBe(true);
          expect(fieldSchema.safeParse(property.maximum + 1).success, `${name}.${field} > maximum`).toBe(
            false,
          );
        }
        if (property.type === "integer")
          expect(fieldSchema.safeParse(1.5).success, `${name}.${field} integer`).toBe(false);
      }
    }
  });

  it("accepts a minimal payload of every object definition, and refuses it with one unknown field", () => {
    let checked = 0;
    for (const [name, definition] of Object.entries(spec!.definitions)) {
      if (definition.type !== "object" || !definition.properties) continue;
      const schema = definitionSchemas[name as keyof typeof definitionSchemas] as z.ZodType;
      const payload = sample(definition, spec!.definitions) as Record<string, unknown>;
      expect(schema.safeParse(payload).error, name).toBeUndefined();
      const typo = schema.safeParse({ ...payload, not_a_field: 1 });
      expect(typo.success, `${name} with an unknown field`).toBe(name === "Error");
      if (!typo.success) expect(typo.error.issues[0]?.code).toBe("unrecognized_keys");
      checked++;
    }
    expect(checked).toBeGreaterThan(35);
  });

  it("accepts the spec's own example values", () => {
    const examples: [string, string, unknown][] = [];
    for (const [name, definition] of Object.entries(spec!.definitions))
      for (const [field, property] of Object.entries(definition.properties ?? {}))
        if (property.example !== undefined) examples.push([name, field, property.example]);
    expect(examples.length).toBeGreaterThan(0);
    for (const [name, field, example] of examples) {
      const schema = definitionSchemas[name as keyof typeof definitionSchemas] as z.ZodObject;
      expect(unwrap(schema.shape[field] as z.ZodType).safeParse(example).success, `${name}.${field}`).toBe(
        true,
      );
    }
  });
});

describe.skipIf(sharedSkipReason !== undefined)(`Firecracker's own example files${sharedSkipSuffix}`, () => {
  it("parses every vm-config file as the spec says: all but the one missing mem_size_mib", () => {
    const dir = vmConfigDir;
    const files = readdirSync(dir).filter((f) => f.endsWith(".json"));
    expect(files.length).toBeGreaterThan(3);
    for (const file of files) {
      const result = fullVmConfigurationSchema.safeParse(JSON.parse(readFileSync(join(dir, file), "utf8")));
      if (file === "vm_config_missing_mem_size_mib.json") {
        expect(result.success, file).toBe(false);
        expect(result.error?.issues.map((i) => i.path.join("."))).toEqual(["machine-config.mem_size_mib"]);
      } else {
        expect(result.error, file).toBeUndefined();
      }
    }
  });

  it("validates every single-quoted curl payload in Firecracker's docs against its operation", () => {
    const docs = firecrackerDocsDir;
    const routes = (Object.entries(OPERATIONS) as [OperationId, OperationSpec][]).map(([id, op]) => ({
      id,
      op,
      pattern: new RegExp(`^${op.path.replace(/\{\w+\}/g, "[^/]+")}$`),
    }));
    let validated = 0;
    const notJson: string[] = [];
    for (const file of readdirSync(docs).filter((f) => f.endsWith(".md"))) {
      const text = readFileSync(join(docs, file), "utf8").replace(/^> ?/gm, "");
      // Shell variables the doc assigns (MMDS_IPV4_ADDR=169.254.170.2) are substituted as a shell would.
      const variables = new Map(
        [...text.matchAll(/^([A-Z][A-Z0-9_]*)=(\S+)$/gm)].map(([, name, value]) => [name!, value!]),
      );
      const calls = text.matchAll(
        /-X (GET|PUT|PATCH) ['"]http:\/\/localhost([^'"]+)['"][\s\S]*?-d '([^']*)'/g,
      );
      for (const [, method, path, payload] of calls) {
        const route = routes.find((r) => r.op.method === method && r.pattern.test(path!));
        expect(route, `${file}: ${method} ${path}`).toBeDefined();
        const schema = route!.op.body!.schema;
        let body: unknown;
        try {
          body = JSON.parse(
            payload!.replace(/\$\{(\w+)\}/g, (whole, name: string) => variables.get(name) ?? whole),
          );
        } catch {
          notJson.push(`${file}: ${method} ${path}`); // shell placeholders such as ${VAR} outside strings
          continue;
        }
        const result = schema.safeParse(body);
        expect(result.error, `${file}: ${method} ${path}`).toBeUndefined();
        validated++;
      }
    }
    expect(validated).toBeGreaterThanOrEqual(15);
    expect(notJson.length, notJson.join("\n")).toBeLessThan(validated / 3);
  });
});
