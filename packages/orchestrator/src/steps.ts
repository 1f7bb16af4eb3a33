import { OrchestratorError } from "./errors.ts";

/** A value an earlier step was to put in the context; a clear error when a fork removed that step. */
export function requireFromStep<T>(value: T | undefined, what: string): T {
  if (value === undefined) {
    throw new OrchestratorError("STEP_FAILED", `${what} is missing: a step it depends on was removed`);
  }
  return value;
}

/** What a step may return: a cleanup that undoes it, run in reverse order when a later step fails. */
export type StepCleanup = (() => void | Promise<void>) | AsyncDisposable | Disposable;

export interface StepRunOptions {
  signal: AbortSignal;
}

/** One named unit of work on a shared, typed context (a builder's or a creator's state). */
export interface Step<Context> {
  readonly name: string;
  // biome-ignore lint/suspicious/noConfusingVoidType: steps without a cleanup simply return nothing
  run(context: Context, options: StepRunOptions): void | StepCleanup | Promise<void | StepCleanup>;
}

/** What `runSteps` reports: a step or cleanup started, ended or failed (a union on `kind`). */
export type StepEvent =
  | { kind: "step-start"; step: string; index: number; total: number }
  | { kind: "step-end"; step: string; index: number; durationMs: number }
  | { kind: "step-failed"; step: string; index: number; durationMs: number; error: unknown }
  | { kind: "cleanup-start"; step: string }
  | { kind: "cleanup-end"; step: string; durationMs: number }
  | { kind: "cleanup-failed"; step: string; durationMs: number; error: unknown };

export interface StepTiming {
  step: string;
  durationMs: number;
}

function assertName(name: string): void {
  if (typeof name !== "string" || name.trim() === "") {
    throw new OrchestratorError("INVALID_OPTIONS", "a step needs a non-empty name");
  }
}

/**
 * An immutable ordered list of named steps. Every edit returns a new list, so a fork edits its own
 * copy of the default template-build or sandbox-create list without touching anyone else's.
 */
export class StepList<Context> {
  readonly #steps: readonly Step<Context>[];

  constructor(steps: readonly Step<Context>[] = []) {
    const seen = new Set<string>();
    for (const step of steps) {
      assertName(step.name);
      if (seen.has(step.name)) {
        throw new OrchestratorError(
          "STEP_DUPLICATE",
          `step "${step.name}" appears twice; step names are unique (replace() swaps a step)`,
          { details: { step: step.name } },
        );
      }
      seen.add(step.name);
    }
    this.#steps = Object.freeze([...steps]);
  }

  get names(): string[] {
    return this.#steps.map((step) => step.name);
  }

  get length(): number {
    return this.#steps.length;
  }

  toArray(): Step<Context>[] {
    return [...this.#steps];
  }

  has(name: string): boolean {
    return this.#steps.some((step) => step.name === name);
  }

  get(name: string): Step<Context> {
    const step = this.#steps[this.#indexOf(name)];
    if (!step) throw this.#notFound(name);
    return step;
  }

  insertBefore(name: string, ...steps: Step<Context>[]): StepList<Context> {
    const index = this.#indexOf(name);
    return new StepList([...this.#steps.slice(0, index), ...steps, ...this.#steps.slice(index)]);
  }

  insertAfter(name: string, ...steps: Step<Context>[]): StepList<Context> {
    const index = this.#indexOf(name) + 1;
    return new StepList([...this.#steps.slice(0, index), ...steps, ...this.#steps.slice(index)]);
  }

  append(...steps: Step<Context>[]): StepList<Context> {
    return new StepList([...this.#steps, ...steps]);
  }

  prepend(...steps: Step<Context>[]): StepList<Context> {
    return new StepList([...steps, ...this.#steps]);
  }

  /** Swaps the step called `name` for `step` (which may carry another name). */
  replace(name: string, step: Step<Context>): StepList<Context> {
    const index = this.#indexOf(name);
    return new StepList(this.#steps.map((existing, i) => (i === index ? step : existing)));
  }

  /** Wraps a step, keeping its name: `wrap("boot", (inner) => ({ name: "boot", run: ... }))`. */
  wrap(name: string, wrapper: (inner: Step<Context>) => Step<Context>): StepList<Context> {
    return this.replace(name, wrapper(this.get(name)));
  }

  remove(name: string): StepList<Context> {
    const index = this.#indexOf(name);
    return new StepList(this.#steps.filter((_, i) => i !== index));
  }

  #indexOf(name: string): number {
    const index = this.#steps.findIndex((step) => step.name === name);
    if (index < 0) throw this.#notFound(name);
    return index;
  }

  #notFound(name: string): OrchestratorError {
    return new OrchestratorError(
      "STEP_NOT_FOUND",
      `no step named "${name}"; the steps are: ${this.names.join(", ") || "(none)"}`,
      { details: { step: name, steps: this.names } },
    );
  }
}

export interface RunStepsOptions {
  signal?: AbortSignal;
  onEvent?: (event: StepEvent) => void;
}

/**
 * The resources the steps created, owned by the caller after a successful run. Disposing runs the
 * cleanups in reverse order.
 */
export interface StepRunResult extends AsyncDisposable {
  timings: StepTiming[];
  /** Runs every cleanup in reverse, even when one fails; throws STEP_CLEANUP_FAILED afterwards. */
  cleanup(): Promise<void>;
}

function toCleanupFunction(cleanup: StepCleanup): () => void | Promise<void> {
  if (typeof cleanup === "function") return cleanup;
  if (Symbol.asyncDispose in cleanup) {
    return async () => {
      await cleanup[Symbol.asyncDispose]();
    };
  }
  if (Symbol.dispose in cleanup) return () => cleanup[Symbol.dispose]();
  throw new OrchestratorError(
    "INVALID_OPTIONS",
    "a step returned something that is neither a function nor a disposable",
  );
}

function abortError(signal: AbortSignal, step: string | undefined): OrchestratorError {
  return new OrchestratorError(
    "ABORTED",
    step === undefined ? "aborted before the first step" : `aborted after step "${step}"`,
    { cause: signal.reason, details: { step } },
  );
}

function emit(onEvent: RunStepsOptions["onEvent"], event: StepEvent): void {
  if (!onEvent) return;
  try {
    onEvent(event);
  } catch {
    // A listener's bug must not leave half-built resources behind; it only loses its event.
  }
}

/**
 * Runs the steps in order, timing each and emitting events. When a step throws or the signal
 * aborts, the cleanups of the steps already run are run in reverse and the error is rethrown as
 * STEP_FAILED (or ABORTED). The step itself is expected to undo its own partial work.
 */
export async function runSteps<Context>(
  steps: StepList<Context> | readonly Step<Context>[],
  context: Context,
  options: RunStepsOptions = {},
): Promise<StepRunResult> {
  const list = steps instanceof StepList ? steps.toArray() : new StepList(steps).toArray();
  const signal = options.signal ?? new AbortController().signal;
  const cleanups: { step: string; cleanup: () => void | Promise<void> }[] = [];
  const timings: StepTiming[] = [];
  let cleaned = false;

  const cleanup = async (): Promise<void> => {
    if (cleaned) return;
    cleaned = true;
    const errors: { step: string; error: unknown }[] = [];
    for (const { step, cleanup: undo } of cleanups.reverse()) {
      emit(options.onEvent, { kind: "cleanup-start", step });
      const started = performance.now();
      try {
        await undo();
        emit(options.onEvent, { kind: "cleanup-end", step, durationMs: performance.now() - started });
      } catch (error) {
        errors.push({ step, error });
        emit(options.onEvent, {
          kind: "cleanup-failed",
          step,
          durationMs: performance.now() - started,
          error,
        });
      }
    }
    if (errors.length > 0) {
      throw new OrchestratorError(
        "STEP_CLEANUP_FAILED",
        `cleanup failed for step${errors.length === 1 ? "" : "s"} ${errors.map((e) => `"${e.step}" (${(e.error as Error)?.message ?? String(e.error)})`).join(", ")}; the resources they own may still exist, run reclaim`,
        { cause: errors[0]?.error, details: { errors } },
      );
    }
  };

  const fail = async (error: OrchestratorError): Promise<never> => {
    try {
      await cleanup();
    } catch (cleanupError) {
      Object.defineProperty(error, "details", {
        value: Object.freeze({ ...error.details, cleanupError }),
      });
    }
    throw error;
  };

  let previous: string | undefined;
  for (const [index, step] of list.entries()) {
    if (signal.aborted) return fail(abortError(signal, previous));
    emit(options.onEvent, { kind: "step-start", step: step.name, index, total: list.length });
    const started = performance.now();
    // biome-ignore lint/suspicious/noConfusingVoidType: what Step.run returns
    let result: void | StepCleanup;
    try {
      result = await step.run(context, { signal });
    } catch (error) {
      const durationMs = performance.now() - started;
      emit(options.onEvent, { kind: "step-failed", step: step.name, index, durationMs, error });
      const wrapped = signal.aborted
        ? new OrchestratorError("ABORTED", `aborted during step "${step.name}"`, {
            cause: error,
            details: { step: step.name },
          })
        : new OrchestratorError(
            "STEP_FAILED",
            `step "${step.name}" failed: ${(error as Error)?.message ?? String(error)}`,
            { cause: error, details: { step: step.name, completed: timings.map((t) => t.step) } },
          );
      return fail(wrapped);
    }
    const durationMs = performance.now() - started;
    if (result !== undefined && result !== null) {
      cleanups.push({ step: step.name, cleanup: toCleanupFunction(result) });
    }
    timings.push({ step: step.name, durationMs });
    emit(options.onEvent, { kind: "step-end", step: step.name, index, durationMs });
    previous = step.name;
  }
  if (signal.aborted) return fail(abortError(signal, previous));

  return {
    timings,
    cleanup,
    [Symbol.asyncDispose]: cleanup,
  };
}
