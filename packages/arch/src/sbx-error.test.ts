import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import { ArchError } from "./errors.ts";
import { hasErrorMarker, SbxError } from "./sbx-error.ts";

type ErrorsModule = typeof import("./errors.ts");

/** errors.ts and sbx-error.ts compiled to CommonJS in a temp dir and required: a CJS copy of the package. */
function requireCjsCopy(dir: string): ErrorsModule {
  for (const name of ["errors.ts", "sbx-error.ts"]) {
    const source = readFileSync(new URL(name, import.meta.url), "utf8");
    const { outputText } = ts.transpileModule(source, {
      compilerOptions: {
        module: ts.ModuleKind.CommonJS,
        target: ts.ScriptTarget.ES2023,
        rewriteRelativeImportExtensions: true,
      },
    });
    writeFileSync(join(dir, name.replace(/\.ts$/, ".js")), outputText);
  }
  writeFileSync(join(dir, "package.json"), '{"type":"commonjs"}');
  return createRequire(join(dir, "index.js"))("./errors.js") as ErrorsModule;
}

describe("SbxError and the error markers", () => {
  it("recognizes an ArchError from a CommonJS copy of the package, where instanceof cannot", () => {
    const dir = mkdtempSync(join(tmpdir(), "sbx-error-cjs-"));
    try {
      const cjs = requireCjsCopy(dir);
      expect(cjs.ArchError).not.toBe(ArchError);
      const fromCjs = new cjs.ArchError("UNKNOWN_ARCH", "from the CJS copy", { details: { value: "sparc" } });
      expect(fromCjs instanceof ArchError).toBe(false);
      expect(ArchError.isInstance(fromCjs)).toBe(true);
      expect(SbxError.isInstance(fromCjs)).toBe(true);
      expect(cjs.ArchError.isInstance(new ArchError("UNKNOWN_ARCH", "from the ESM source"))).toBe(true);
      expect(fromCjs).toMatchObject({ name: "ArchError", code: "UNKNOWN_ARCH", details: { value: "sparc" } });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(readdirSync(tmpdir()).filter((name) => name.startsWith("sbx-error-cjs-"))).toEqual([]);
  });

  it("recognizes an ArchError from a second ESM instance of the module", async () => {
    // A query makes the module loader evaluate the file again: a second class, as a second copy would have.
    const specifier = "./errors.ts?second-instance";
    const copy = (await import(specifier)) as ErrorsModule;
    const error = new copy.ArchError("INVALID_OPTIONS", "from the second instance");
    expect(error instanceof ArchError).toBe(false);
    expect(ArchError.isInstance(error)).toBe(true);
  });

  it("tells other errors and look-alikes apart", () => {
    const lookAlike = Object.assign(new Error("plain"), { name: "ArchError", code: "UNKNOWN_ARCH" });
    for (const value of [
      lookAlike,
      new Error("plain"),
      null,
      undefined,
      "ArchError",
      { code: "UNKNOWN_ARCH" },
    ]) {
      expect(ArchError.isInstance(value)).toBe(false);
      expect(SbxError.isInstance(value)).toBe(false);
    }
    class OtherPackageError extends SbxError<"X"> {
      static override readonly errorScope: string = "test.other";
    }
    class OtherPackageSubError extends OtherPackageError {
      static override readonly errorScope = "test.other.sub";
    }
    const other = new OtherPackageError("X", "another package's error");
    const sub = new OtherPackageSubError("X", "a subclass's error");
    expect(SbxError.isInstance(other)).toBe(true);
    expect(ArchError.isInstance(other)).toBe(false);
    expect([OtherPackageError.isInstance(sub), OtherPackageSubError.isInstance(sub)]).toEqual([true, true]);
    expect(OtherPackageSubError.isInstance(other)).toBe(false);
    expect(hasErrorMarker(new ArchError("UNKNOWN_ARCH", "m"), "arch")).toBe(true);
  });

  it("keeps code, details and cause, and the marker out of what logs print", () => {
    const cause = new Error("root cause");
    const error = new ArchError("ARTIFACT_NOT_FOUND", "missing", { cause, details: { path: "/x" } });
    expect(error).toMatchObject({ code: "ARTIFACT_NOT_FOUND", details: { path: "/x" }, cause });
    expect(Object.isFrozen(error.details)).toBe(true);
    expect(new ArchError("UNKNOWN_ARCH", "m").details).toEqual({});
    expect(Object.getOwnPropertySymbols(error)).toEqual([]);
    expect(JSON.stringify({ ...error })).not.toContain("sbx.error");
  });
});
