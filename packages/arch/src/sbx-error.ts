// `instanceof` fails when a process loads two copies of a package (its ESM and CJS builds, or two
// versions in node_modules): each copy has its own class. So every sbx error class marks its prototype
// with a `Symbol.for` key, which all copies share through the global symbol registry, and its static
// `isInstance` looks for that key instead (vercel/ai's AISDKError does the same).

/** The options every sbx error constructor takes. */
export interface SbxErrorOptions {
  cause?: unknown;
  /** The offending values, for logs and for callers that branch on more than `code`. */
  details?: Record<string, unknown>;
}

/** The registry key of `scope`'s marker: `sbx.error.<scope>`. */
function errorMarkerKey(scope: string): symbol {
  return Symbol.for(`sbx.error.${scope}`);
}

/**
 * Marks every instance of `errorClass` (and of its subclasses) as belonging to `scope`. The marker sits
 * on the prototype, not enumerable, so it costs nothing per error and does not show in logs.
 */
function markErrorClass(errorClass: abstract new (...args: never[]) => Error, scope: string): void {
  Object.defineProperty(errorClass.prototype, errorMarkerKey(scope), { value: true });
}

/** Whether `value` carries `scope`'s marker: an error of that class from any copy of its package. */
export function hasErrorMarker(value: unknown, scope: string): boolean {
  return (
    typeof value === "object" &&
    value !== null &&
    (value as Record<symbol, unknown>)[errorMarkerKey(scope)] === true
  );
}

type ErrorClass<T> = abstract new (...args: never[]) => T;

// Marks the prototype of every class from `errorClass` up to SbxError that declares its own
// `errorScope`, once per class, so subclasses need no code of their own to be recognized.
function markClassChain(errorClass: ErrorClass<Error>): void {
  for (let c: unknown = errorClass; typeof c === "function" && c !== Error; c = Object.getPrototypeOf(c)) {
    const scoped = c as ErrorClass<Error> & { errorScope?: string };
    if (
      Object.hasOwn(scoped, "errorScope") &&
      scoped.errorScope &&
      !Object.hasOwn(scoped.prototype, errorMarkerKey(scoped.errorScope))
    )
      markErrorClass(scoped, scoped.errorScope);
  }
}

/**
 * The base of every sbx package's error class: a stable string `code`, `details` and `cause`. A
 * subclass sets `static override readonly errorScope = "<package>"`; its inherited static `isInstance`
 * then recognizes its errors from any copy of its package, and `SbxError.isInstance` any sbx error.
 */
export class SbxError<Code extends string = string> extends Error {
  /** The marker scope (`sbx.error.<scope>`) of this class's errors; every package's class sets its own. */
  static readonly errorScope: string = "any";
  readonly code: Code;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: Code, message: string, options: SbxErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = Object.freeze({ ...options.details });
    markClassChain(new.target);
  }

  /** Whether `value` is an error of this class (by its `errorScope`), from any copy of its package. */
  static isInstance<T>(this: ErrorClass<T> & { errorScope: string }, value: unknown): value is T {
    // biome-ignore lint/complexity/noThisInStatic: `this` is the subclass isInstance was called on
    return hasErrorMarker(value, this.errorScope);
  }
}
