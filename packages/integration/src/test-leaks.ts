import { settle } from "@sbx/agent/testing";
import { childPids, openFdCount } from "@sbx/arch/testing";
import { expect } from "vitest";

/** This process's children and open fds, to compare with after a test. */
export const ownedCounts = () => ({ children: childPids().length, fds: openFdCount() });

/** Children and fds go back to `before` (waiting while processes exit and sockets close). */
export async function expectBackTo(before: { children: number; fds: number }): Promise<void> {
  expect(
    await settle(
      () => childPids().length,
      (n) => n <= before.children,
    ),
  ).toBe(before.children);
  expect(
    await settle(
      () => openFdCount(),
      (n) => n <= before.fds,
    ),
  ).toBeLessThanOrEqual(before.fds);
}
