import { SbxError } from "@sbx/arch";
import { expect, it } from "vitest";
import { OrchestratorError } from "./errors.ts";

it("OrchestratorError from a second module copy: isInstance yes, instanceof no", async () => {
  const specifier = "./errors.ts?second-copy";
  const module2 = (await import(specifier)) as typeof import("./errors.ts");
  const capacity = new module2.OrchestratorError("CAPACITY_EXCEEDED", "no room", {
    details: { reason: "memory" },
  });
  expect({
    instanceOf: capacity instanceof OrchestratorError,
    isInstance: OrchestratorError.isInstance(capacity),
  }).toEqual({
    instanceOf: false,
    isInstance: true,
  });
  expect(SbxError.isInstance(capacity) && capacity.details.reason === "memory").toBe(true);
});
