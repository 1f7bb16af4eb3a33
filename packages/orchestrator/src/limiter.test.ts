import { describe, expect, it } from "vitest";
import { ConcurrencyLimiter } from "./limiter.ts";

function deferred() {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

describe("ConcurrencyLimiter", () => {
  it("never runs more than max tasks and starts waiters in order", async () => {
    const limiter = new ConcurrencyLimiter(2);
    let running = 0;
    let peak = 0;
    const order: number[] = [];
    const gates = Array.from({ length: 5 }, deferred);
    const tasks = gates.map((gate, i) =>
      limiter.run(async () => {
        running++;
        peak = Math.max(peak, running);
        order.push(i);
        await gate.promise;
        running--;
        return i;
      }),
    );
    await new Promise((r) => setTimeout(r, 5));
    expect(limiter.active).toBe(2);
    expect(limiter.waiting).toBe(3);
    for (const gate of gates) {
      gate.resolve();
      await new Promise((r) => setTimeout(r, 1));
    }
    expect(await Promise.all(tasks)).toEqual([0, 1, 2, 3, 4]);
    expect(peak).toBe(2);
    expect(order).toEqual([0, 1, 2, 3, 4]);
    expect(limiter.active).toBe(0);
  });

  it("frees the slot when a task throws, and drops aborted waiters", async () => {
    const limiter = new ConcurrencyLimiter(1);
    const gate = deferred();
    const first = limiter.run(() => gate.promise);
    const controller = new AbortController();
    const aborted = limiter.run(async () => "never", { signal: controller.signal });
    controller.abort();
    await expect(aborted).rejects.toMatchObject({ code: "ABORTED" });
    expect(limiter.waiting).toBe(0);
    gate.resolve();
    await first;
    await expect(limiter.run(() => Promise.reject(new Error("boom")))).rejects.toThrow("boom");
    expect(await limiter.run(async () => 7)).toBe(7);
    expect(() => new ConcurrencyLimiter(0)).toThrow(/positive integer/);
  });
});
