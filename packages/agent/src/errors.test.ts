import { SbxError } from "@sbx/arch";
import { expect, it } from "vitest";
import { AgentError } from "./errors.ts";

it("AgentError carries the guest's errno and details, and isInstance sees through a second module copy", async () => {
  const specifier = "./errors.ts?second-copy";
  const copied = (await import(specifier)) as typeof import("./errors.ts");
  const error = new copied.AgentError("FILE_NOT_FOUND", "/etc/missing", {
    errno: 2,
    details: { path: "/etc/missing" },
  });
  expect(error instanceof AgentError).toBe(false);
  expect(AgentError.isInstance(error) && SbxError.isInstance(error)).toBe(true);
  expect(error).toMatchObject({ name: "AgentError", errno: 2, details: { path: "/etc/missing" } });
  expect(AgentError.isInstance({ name: "AgentError", code: "FILE_NOT_FOUND" })).toBe(false);
});
