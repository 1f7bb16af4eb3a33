import { ArchError } from "@sbx/arch";
import { expect, it } from "vitest";
import { RootfsError } from "./errors.ts";

it("RootfsError.isInstance recognizes one made by another copy of the module, and not an ArchError", async () => {
  const specifier = "./errors.ts?second-copy";
  const other = ((await import(specifier)) as typeof import("./errors.ts")).RootfsError;
  const error = new other("LAYER_UNSAFE_ENTRY", "a symlink escapes", { details: { entry: "../x" } });
  expect([error instanceof RootfsError, RootfsError.isInstance(error)]).toEqual([false, true]);
  expect(error.details).toEqual({ entry: "../x" });
  expect(RootfsError.isInstance(new ArchError("UNKNOWN_ARCH", "sparc"))).toBe(false);
});
