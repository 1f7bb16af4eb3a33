import { describe, expect, it } from "vitest";
import { OrchestratorError } from "./errors.ts";
import { runSteps, type Step, type StepEvent, StepList } from "./steps.ts";

interface Context {
  log: string[];
}

function step(name: string, options: { fail?: boolean; cleanup?: boolean } = {}): Step<Context> {
  return {
    name,
    run(context) {
      context.log.push(`run ${name}`);
      if (options.fail) throw new Error(`${name} broke`);
      if (options.cleanup === false) return undefined;
      return () => {
        context.log.push(`undo ${name}`);
      };
    },
  };
}

function codeOf(run: () => unknown): string | undefined {
  try {
    run();
  } catch (error) {
    return (error as OrchestratorError).code;
  }
  return undefined;
}

describe("StepList", () => {
  const base = new StepList<Context>([step("a"), step("b"), step("c")]);

  it("inserts, replaces, wraps and removes by name without changing the original", () => {
    expect(base.insertBefore("b", step("x")).names).toEqual(["a", "x", "b", "c"]);
    expect(base.insertAfter("c", step("y"), step("z")).names).toEqual(["a", "b", "c", "y", "z"]);
    expect(base.insertAfter("a", step("x")).names).toEqual(["a", "x", "b", "c"]);
    expect(base.replace("b", step("b2")).names).toEqual(["a", "b2", "c"]);
    expect(base.remove("a").names).toEqual(["b", "c"]);
    expect(base.prepend(step("p")).append(step("q")).names).toEqual(["p", "a", "b", "c", "q"]);
    expect(base.names).toEqual(["a", "b", "c"]);
    const wrapped = base.wrap("b", (inner) => ({
      name: inner.name,
      run: (context, options) => {
        context.log.push("before b");
        return inner.run(context, options);
      },
    }));
    expect(wrapped.names).toEqual(["a", "b", "c"]);
    expect(wrapped.get("b")).not.toBe(base.get("b"));
  });

  it("rejects unknown and duplicate names with typed errors", () => {
    expect(codeOf(() => base.remove("nope"))).toBe("STEP_NOT_FOUND");
    expect(codeOf(() => base.insertBefore("nope", step("x")))).toBe("STEP_NOT_FOUND");
    expect(codeOf(() => base.replace("nope", step("x")))).toBe("STEP_NOT_FOUND");
    expect(codeOf(() => base.get("nope"))).toBe("STEP_NOT_FOUND");
    expect(codeOf(() => base.append(step("a")))).toBe("STEP_DUPLICATE");
    expect(codeOf(() => base.replace("a", step("b")))).toBe("STEP_DUPLICATE");
    expect(codeOf(() => new StepList([step("")]))).toBe("INVALID_OPTIONS");
    expect(() => base.remove("nope")).toThrow(/a, b, c/);
  });
});

describe("runSteps", () => {
  it("runs in order, times each step and emits events; dispose undoes in reverse", async () => {
    const context: Context = { log: [] };
    const events: StepEvent[] = [];
    const list = new StepList([step("a"), step("b", { cleanup: false }), step("c")]);
    {
      await using result = await runSteps(list, context, { onEvent: (e) => events.push(e) });
      expect(result.timings.map((t) => t.step)).toEqual(["a", "b", "c"]);
      expect(result.timings.every((t) => t.durationMs >= 0)).toBe(true);
      expect(context.log).toEqual(["run a", "run b", "run c"]);
    }
    expect(context.log).toEqual(["run a", "run b", "run c", "undo c", "undo a"]);
    expect(events.filter((e) => e.kind === "step-start").map((e) => e.step)).toEqual(["a", "b", "c"]);
    expect(events.filter((e) => e.kind === "step-end")).toHaveLength(3);
    expect(events.find((e) => e.kind === "step-start")).toMatchObject({ index: 0, total: 3 });
  });

  it("on failure runs the finished steps' cleanups in reverse and reports the step", async () => {
    const context: Context = { log: [] };
    const events: StepEvent[] = [];
    const list = new StepList([step("a"), step("b"), step("c", { fail: true }), step("d")]);
    const error = await runSteps(list, context, { onEvent: (e) => events.push(e) }).catch((e) => e);
    expect(error).toBeInstanceOf(OrchestratorError);
    expect(error.code).toBe("STEP_FAILED");
    expect(error.details.step).toBe("c");
    expect(error.cause.message).toBe("c broke");
    expect(context.log).toEqual(["run a", "run b", "run c", "undo b", "undo a"]);
    expect(events.map((e) => e.kind)).toContain("step-failed");
    expect(events.filter((e) => e.kind === "cleanup-end").map((e) => e.step)).toEqual(["b", "a"]);
  });

  it("keeps cleaning up when one cleanup fails and attaches the cleanup error", async () => {
    const context: Context = { log: [] };
    const failingCleanup: Step<Context> = {
      name: "b",
      run: () => () => {
        throw new Error("undo b broke");
      },
    };
    const list = new StepList([step("a"), failingCleanup, step("c", { fail: true })]);
    const error = await runSteps(list, context).catch((e) => e);
    expect(error.code).toBe("STEP_FAILED");
    expect(error.details.cleanupError.code).toBe("STEP_CLEANUP_FAILED");
    expect(context.log).toContain("undo a");
  });

  it("accepts disposables as cleanups", async () => {
    const log: string[] = [];
    const list = new StepList<Context>([
      { name: "async", run: () => ({ [Symbol.asyncDispose]: async () => void log.push("async") }) },
      { name: "sync", run: () => ({ [Symbol.dispose]: () => void log.push("sync") }) },
    ]);
    const result = await runSteps(list, { log: [] });
    await result.cleanup();
    await result.cleanup();
    expect(log).toEqual(["sync", "async"]);
  });

  it("stops at an abort between steps, undoes what ran and passes the signal to steps", async () => {
    const controller = new AbortController();
    const context: Context = { log: [] };
    let seenSignal: AbortSignal | undefined;
    const list = new StepList<Context>([
      step("a"),
      {
        name: "b",
        run: (ctx, { signal }) => {
          seenSignal = signal;
          ctx.log.push("run b");
          controller.abort(new Error("user cancelled"));
          return () => void ctx.log.push("undo b");
        },
      },
      step("c"),
    ]);
    const error = await runSteps(list, context, { signal: controller.signal }).catch((e) => e);
    expect(error.code).toBe("ABORTED");
    expect(error.cause.message).toBe("user cancelled");
    expect(seenSignal).toBe(controller.signal);
    expect(context.log).toEqual(["run a", "run b", "undo b", "undo a"]);
  });

  it("reports a step that throws because of the abort as ABORTED", async () => {
    const controller = new AbortController();
    const context: Context = { log: [] };
    const list = new StepList<Context>([
      step("a"),
      {
        name: "wait",
        run: (_ctx, { signal }) =>
          new Promise<void>((_resolve, reject) => {
            signal.addEventListener("abort", () => reject(signal.reason), { once: true });
            setTimeout(() => controller.abort(new Error("timeout")), 5);
          }),
      },
    ]);
    const error = await runSteps(list, context, { signal: controller.signal }).catch((e) => e);
    expect(error.code).toBe("ABORTED");
    expect(error.details.step).toBe("wait");
    expect(context.log).toEqual(["run a", "undo a"]);
  });

  it("does not start when already aborted, and survives a throwing listener", async () => {
    const context: Context = { log: [] };
    const error = await runSteps([step("a")], context, { signal: AbortSignal.abort() }).catch((e) => e);
    expect(error.code).toBe("ABORTED");
    expect(context.log).toEqual([]);
    const result = await runSteps([step("a")], context, {
      onEvent: () => {
        throw new Error("listener bug");
      },
    });
    await result.cleanup();
    expect(context.log).toEqual(["run a", "undo a"]);
  });
});
