import { readdirSync } from "node:fs";
import { childPids, openFdTargets } from "@sbx/arch/testing";
import { expect, vi } from "vitest";

export { childPids };

export function fdCount(): number {
  return readdirSync("/proc/self/fd").length;
}

/** Kinds of this process's fds that matter here: a leaked userfaultfd or memfd shows up by name. */
export const openSpecialFds = (): string[] => openFdTargets(/userfaultfd|^\/memfd:|eventfd/);

export const settle = (ms = 30) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Snapshot of what a test owns; the returned check fails if fds, userfaultfds, memfds or children leaked.
 * Counts are compared exactly: "fewer after" would hide a leak paired with a descriptor closed early.
 * A worker's exit and a socket's close finish on later event-loop turns, so the check waits (bounded)
 * for the counts to come back; a leak never does.
 */
export function leakCheck(): () => Promise<void> {
  const before = { fds: fdCount(), special: openSpecialFds(), children: childPids() };
  return async () => {
    await vi.waitFor(
      () => {
        expect(openSpecialFds()).toEqual(before.special);
        expect(fdCount()).toBe(before.fds);
        expect(childPids()).toEqual(before.children);
      },
      { timeout: 10_000, interval: 10 },
    );
  };
}
