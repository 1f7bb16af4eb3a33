import { SbxError } from "@sbx/arch";
import { expect, it } from "vitest";
import { StoreError } from "./errors.ts";

it("StoreError keeps key, variable and details, and is recognized from a second copy of its module", async () => {
  const specifier = "./errors.ts?second-copy";
  const { StoreError: CopiedStoreError } = (await import(specifier)) as typeof import("./errors.ts");
  const error = new CopiedStoreError("CHUNK_CORRUPT", "chunk 3 of memory fails its sha256", {
    key: "builds/a/memory/3",
    details: { chunk: 3 },
  });
  expect(error instanceof StoreError).toBe(false);
  expect([StoreError.isInstance(error), SbxError.isInstance(error)]).toEqual([true, true]);
  expect(error).toMatchObject({ key: "builds/a/memory/3", variable: undefined, details: { chunk: 3 } });
  expect(StoreError.isInstance(new Error("CHUNK_CORRUPT"))).toBe(false);
});
