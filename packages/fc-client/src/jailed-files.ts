// What a jailed Firecracker is given by path (config, log, metrics, seccomp filter) must exist inside
// its chroot, named by its path there; this puts each in and builds Firecracker's arguments with them.
import { open } from "node:fs/promises";
import { type Arch, ArchError, archTraits, type Logger } from "@sbx/arch";
import { FirecrackerLaunchError } from "./errors.ts";
import { type PreparedJail, prepareJail, writeIntoJail } from "./jail.ts";
import type { LaunchFirecrackerOptions } from "./launcher.ts";
import type { FullVmConfiguration } from "./schemas.ts";

const JAILED = {
  config: "vm-config.json",
  log: "firecracker.log",
  metrics: "metrics.ndjson",
  seccomp: "seccomp-filter.bpf",
} as const;

async function ensureFile(path: string): Promise<void> {
  const handle = await open(path, "a");
  await handle.close();
}

export async function prepareJailedFiles(
  options: LaunchFirecrackerOptions & { jail: NonNullable<LaunchFirecrackerOptions["jail"]> },
  id: string,
  configObject: FullVmConfiguration | undefined,
  archArgs: readonly string[],
  arch: Arch,
  logger: Logger,
): Promise<PreparedJail> {
  let jailedArchArgs = [...archArgs];
  if (options.seccompFilter !== undefined) {
    try {
      jailedArchArgs = archTraits(arch).firecrackerArgs({
        uffdRestore: options.uffdRestore ?? false,
        allowNoSeccomp: options.allowNoSeccomp,
        seccompFilter: `/${JAILED.seccomp}`,
        logger,
      });
    } catch (cause) {
      if (cause instanceof ArchError) {
        throw new FirecrackerLaunchError("INVALID_OPTIONS", cause.message, { cause, details: { arch } });
      }
      throw cause;
    }
  }
  const hasConfig = options.configFile !== undefined;
  const firecrackerArgs = [
    ...jailedArchArgs,
    ...(options.logPath ? ["--log-path", `/${JAILED.log}`] : []),
    ...(options.metricsPath ? ["--metrics-path", `/${JAILED.metrics}`] : []),
    ...(hasConfig ? ["--config-file", `/${JAILED.config}`] : []),
    ...(options.args ?? []),
  ];
  const prepared = await prepareJail(options.jail, { binary: options.binary, id, firecrackerArgs });
  try {
    const files: Record<string, string> = {};
    const owned: string[] = [];
    if (typeof options.configFile === "string") files[JAILED.config] = options.configFile;
    if (options.seccompFilter !== undefined) files[JAILED.seccomp] = options.seccompFilter;
    if (options.logPath) {
      await ensureFile(options.logPath);
      files[JAILED.log] = options.logPath;
      owned.push(JAILED.log);
    }
    if (options.metricsPath) {
      await ensureFile(options.metricsPath);
      files[JAILED.metrics] = options.metricsPath;
      owned.push(JAILED.metrics);
    }
    await prepared.jail.place(files, { owned });
    if (configObject !== undefined)
      await writeIntoJail(prepared.jail, JAILED.config, JSON.stringify(configObject));
  } catch (cause) {
    await prepared.remove();
    if (cause instanceof FirecrackerLaunchError) throw cause;
    throw new FirecrackerLaunchError(
      "JAIL_SETUP_FAILED",
      `putting Firecracker's files into the jail failed: ${(cause as Error).message}`,
      { cause },
    );
  }
  return prepared;
}
