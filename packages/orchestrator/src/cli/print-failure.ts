import { OrchestratorError } from "../errors.ts";

/** A failed command: `{ error: { code, message, details } }` on stdout with --json, else one line on stderr. */
export function printFailure(
  io: { stdout: { write(text: string): unknown }; stderr: { write(text: string): unknown } },
  json: boolean,
  command: string,
  error: unknown,
): void {
  const code =
    error instanceof OrchestratorError ? error.code : ((error as { code?: string }).code ?? "UNEXPECTED");
  const message = (error as Error).message ?? String(error);
  if (json) {
    const details = error instanceof OrchestratorError ? error.details : {};
    io.stdout.write(`${JSON.stringify({ error: { code, message, details } }, null, 2)}\n`);
  } else {
    io.stderr.write(`${command}: ${message}\n`);
  }
}
