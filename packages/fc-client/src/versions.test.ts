import { describe, expect, it } from "vitest";
import { OPERATIONS } from "./operations.ts";
import { readSpec, sharedSkipReason, sharedSkipSuffix, specOperations } from "./test-spec-files.ts";
import {
  FIELD_SINCE,
  OPERATION_SINCE,
  parseFirecrackerVersion,
  SPEC_VERSIONS,
  versionAtLeast,
} from "./versions.ts";

if (sharedSkipReason) console.log(`[fc-client] version-table staleness tests skipped: ${sharedSkipReason}`);

const minorOf = (version: string) => {
  const parsed = parseFirecrackerVersion(version)!;
  return parsed.major * 1000 + parsed.minor;
};

describe("version parsing and comparison", () => {
  it("reads what GET /version and --version print", () => {
    expect(parseFirecrackerVersion("1.14.2")).toEqual({ major: 1, minor: 14, patch: 2 });
    expect(parseFirecrackerVersion("v1.16.0-dev")).toEqual({ major: 1, minor: 16, patch: 0 });
    expect(parseFirecrackerVersion("Firecracker v1")).toBeUndefined();
    expect(parseFirecrackerVersion("")).toBeUndefined();
  });

  it("compares by major.minor, because features land in minor releases only", () => {
    const v = parseFirecrackerVersion("1.14.2")!;
    expect(versionAtLeast(v, "1.14")).toBe(true);
    expect(versionAtLeast(v, "1.12")).toBe(true);
    expect(versionAtLeast(v, "1.16")).toBe(false);
    expect(versionAtLeast(parseFirecrackerVersion("1.16.0")!, "1.16.1")).toBe(true);
    expect(versionAtLeast(parseFirecrackerVersion("2.0.0")!, "1.16")).toBe(true);
    expect(() => versionAtLeast(v, "latest")).toThrow(TypeError);
  });
});

describe.skipIf(sharedSkipReason !== undefined)(
  `the version table, re-derived from the three specs${sharedSkipSuffix}`,
  () => {
    const specs = sharedSkipReason
      ? []
      : SPEC_VERSIONS.map((version) => ({ version, spec: readSpec(version) }));

    // For each feature: the first spec that has it. The table must say exactly that spec's minor, or a
    // measured earlier minor that is still newer than the spec before it.
    const expectWithin = (what: string, recorded: string | undefined, firstSpec: number) => {
      if (firstSpec === 0) {
        expect(recorded, `${what} is in the oldest spec, so it needs no entry`).toBeUndefined();
        return;
      }
      expect(recorded, `${what} first appears in spec ${SPEC_VERSIONS[firstSpec]}`).toBeDefined();
      expect(minorOf(recorded!), `${what}`).toBeLessThanOrEqual(minorOf(SPEC_VERSIONS[firstSpec]!));
      expect(minorOf(recorded!), `${what}`).toBeGreaterThan(minorOf(SPEC_VERSIONS[firstSpec - 1]!));
    };

    it("has every operation newer than the oldest spec, and no other", () => {
      const newest = specs.at(-1)!.spec;
      for (const { operationId } of specOperations(newest)) {
        const first = specs.findIndex(({ spec }) =>
          specOperations(spec).some((o) => o.operationId === operationId),
        );
        expectWithin(operationId, OPERATION_SINCE[operationId as keyof typeof OPERATIONS], first);
      }
      for (const id of Object.keys(OPERATION_SINCE)) expect(Object.keys(OPERATIONS)).toContain(id);
    });

    it("has every field newer than its definition, and no other", () => {
      const newest = specs.at(-1)!.spec;
      let newFields = 0;
      for (const [name, definition] of Object.entries(newest.definitions)) {
        const firstOfDefinition = specs.findIndex(({ spec }) => spec.definitions[name] !== undefined);
        for (const field of Object.keys(definition.properties ?? {})) {
          const first = specs.findIndex(
            ({ spec }) => spec.definitions[name]?.properties?.[field] !== undefined,
          );
          // A field born with its definition is covered by the operation that introduced the definition.
          const since = FIELD_SINCE[name as keyof typeof FIELD_SINCE]?.[field];
          if (first === firstOfDefinition) expect(since, `${name}.${field}`).toBeUndefined();
          else {
            expectWithin(`${name}.${field}`, since, first);
            newFields++;
          }
        }
      }
      expect(newFields).toBeGreaterThan(10);
      for (const [name, fields] of Object.entries(FIELD_SINCE))
        for (const field of Object.keys(fields ?? {}))
          expect(
            newest.definitions[name]?.properties?.[field],
            `${name}.${field} is in the spec`,
          ).toBeDefined();
    });
  },
);
