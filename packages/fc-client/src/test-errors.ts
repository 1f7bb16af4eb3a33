import { expect } from "vitest";
import { FirecrackerError } from "./errors.ts";

/** The FirecrackerError a promise rejects with (the test fails if it resolves or rejects otherwise). */
export async function rejection(promise: Promise<unknown>): Promise<FirecrackerError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(FirecrackerError);
  return error as FirecrackerError;
}
