// Tests that start Firecracker through the orchestrator run it jailed when JAILER_BIN is set (and this
// is root), and otherwise opt out of the jailer explicitly, as an operator must (SBX_UNJAILED=1).
import { realFirecracker } from "@sbx/fc-client/testing";

/** Config options for a test's VMs: `{ jailerBin }` from JAILER_BIN, else `{ unjailed: true }`. */
export function testLaunchOptions(
  env: Record<string, string | undefined> = process.env,
): { jailerBin: string } | { unjailed: true } {
  const { jailer } = realFirecracker({ env });
  return jailer ? { jailerBin: jailer } : { unjailed: true };
}

/** The same as environment variables, for a child process or `configFromEnv`. */
export function testLaunchEnv(env: Record<string, string | undefined> = process.env): Record<string, string> {
  const options = testLaunchOptions(env);
  return "jailerBin" in options ? { JAILER_BIN: options.jailerBin } : { SBX_UNJAILED: "1" };
}
