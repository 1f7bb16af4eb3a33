/**
 * The logger every sbx package accepts (pino, bunyan and console wrappers fit it). Every method is
 * optional, and the default logger is silent.
 */
export interface Logger {
  debug?(fields: Record<string, unknown>, message: string): void;
  info?(fields: Record<string, unknown>, message: string): void;
  warn?(fields: Record<string, unknown>, message: string): void;
  error?(fields: Record<string, unknown>, message: string): void;
}

/** A logger that drops everything: every package's default. */
export const silentLogger: Logger = Object.freeze({});
