// The Node options a fault worker starts with. By default a worker inherits its parent's execArgv, and
// some of those are about how the parent's own entry point was given, not about modules: a parent run
// as `node --input-type=module < script` makes every worker fail at start ("--input-type can only be
// used with string input"), and Firecracker then waits forever on its first fault. So the worker gets
// only the options that change how modules resolve and load (the `@sbx/source` condition, loaders and
// preloads, type stripping) or how warnings are shown; everything else of the parent's is left out.

/** Options kept with their value, given as `--name=value` or as `--name value` (`-C value`, `-r value`). */
const WITH_VALUE = new Set([
  "--conditions",
  "-C",
  "--import",
  "--require",
  "-r",
  "--loader",
  "--experimental-loader",
  "--disable-warning",
]);
/** Options kept as they are (no value). */
const FLAGS =
  /^--(?:no-)?(?:experimental-strip-types|experimental-transform-types|experimental-require-module|experimental-detect-module|enable-source-maps|warnings|deprecation|trace-warnings|trace-deprecation|trace-uncaught|preserve-symlinks)$/;

export function faultWorkerExecArgv(parentExecArgv: readonly string[] = process.execArgv): string[] {
  const kept: string[] = [];
  for (let i = 0; i < parentExecArgv.length; i++) {
    const argument = parentExecArgv[i] as string;
    const equals = argument.indexOf("=");
    const name = equals > 0 ? argument.slice(0, equals) : argument;
    if (WITH_VALUE.has(name)) {
      if (equals > 0) kept.push(argument);
      else if (i + 1 < parentExecArgv.length) kept.push(argument, parentExecArgv[++i] as string);
    } else if (FLAGS.test(argument)) kept.push(argument);
  }
  return kept;
}
