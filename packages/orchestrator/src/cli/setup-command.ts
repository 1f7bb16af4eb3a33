// `sbx setup`: the command-line face of setupArtifacts, with progress on a terminal or as JSON lines.
import { resolve as resolvePath } from "node:path";
import { parseArgs } from "node:util";
import { normalizeArch } from "@sbx/arch";
import { CONFIG_DEFAULTS, configFromEnv } from "../config.ts";
import { proxySettingsFromEnv } from "../download.ts";
import { OrchestratorError } from "../errors.ts";
import { createProgressReporter, progressModeFor } from "../progress.ts";
import { type InstalledArtifact, type SetupOptions, type SetupResult, setupArtifacts } from "../setup.ts";
import { printFailure } from "./print-failure.ts";

export const SETUP_USAGE = `usage: sbx setup [options]

Downloads the Firecracker release (firecracker, jailer) and a guest kernel for one arch, verifies
them (sha256, ELF arch) and installs them where sbx looks for them:
  {FIRECRACKER_DIR}/{version}/{arch}/firecracker, jailer   {KERNEL_DIR}/{kernel version}/{arch}/{vmlinux|Image}
Files already installed and intact are kept; an interrupted download resumes on the next run.

options (defaults from the same environment variables as every sbx command):
  --arch ARCH                  amd64 or arm64 (TARGET_ARCH, else this host's)
  --firecracker-version V      e.g. v1.14.2 (FIRECRACKER_VERSION)
  --kernel-version LINE        e.g. 6.1: the newest 6.1.x CI kernel (KERNEL_VERSION)
  --firecracker-dir DIR        install root for firecracker and jailer (FIRECRACKER_DIR)
  --kernel-dir DIR             install root for kernels (KERNEL_DIR)
  --kernel-url URL             fetch this kernel instead of the newest CI kernel of the line
  --kernel-sha256 HEX          the kernel's expected sha256
  --pin NAME=HEX               expected sha256 of a file by name (repeatable); wins over published sums
  --release-url URL            mirror of ${"https://github.com/firecracker-microvm/firecracker/releases/download"}
  --kernel-bucket-url URL      mirror of Firecracker's CI bucket (https://s3.amazonaws.com/spec.ccfc.min)
  --from DIR                   offline: take the files from DIR (same names as on the server)
  --proxy URL                  HTTP(S) proxy (default: HTTPS_PROXY / HTTP_PROXY / NO_PROXY)
  --no-firecracker, --no-kernel  skip one of the two
  --force                      reinstall even when the installed files verify
  --json                       result as JSON on stdout, progress as JSON lines on stderr
`;

class SetupUsageError extends Error {}

function parse(argv: string[]) {
  try {
    return parseArgs({
      args: argv,
      allowPositionals: false,
      strict: true,
      options: {
        arch: { type: "string" },
        "firecracker-version": { type: "string" },
        "kernel-version": { type: "string" },
        "firecracker-dir": { type: "string" },
        "kernel-dir": { type: "string" },
        "kernel-url": { type: "string" },
        "kernel-sha256": { type: "string" },
        pin: { type: "string", multiple: true },
        "release-url": { type: "string" },
        "kernel-bucket-url": { type: "string" },
        from: { type: "string" },
        proxy: { type: "string" },
        "no-firecracker": { type: "boolean", default: false },
        "no-kernel": { type: "boolean", default: false },
        force: { type: "boolean", default: false },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }).values;
  } catch (error) {
    throw new SetupUsageError((error as Error).message);
  }
}

export interface SetupIo {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown; isTTY?: boolean };
  env: Readonly<Record<string, string | undefined>>;
}

function describe(name: string, artifact: InstalledArtifact | undefined): string {
  if (!artifact) return "";
  const how =
    artifact.status === "present"
      ? "already installed, intact"
      : {
          published: "sha256 matches the release's published sum",
          pinned: "sha256 matches the pinned digest",
          unpinned: "no published sum; pin it with --kernel-sha256",
          sidecar: "sha256 matches its sidecar",
        }[artifact.verification];
  return `${artifact.status === "present" ? "present  " : "installed"} ${name.padEnd(11)} ${artifact.path}\n          ${" ".repeat(11)} sha256 ${artifact.sha256} (${how})\n`;
}

/** The options `sbx setup` would use with this environment and these flags. */
export function setupOptionsFromCli(
  argv: string[],
  env: SetupIo["env"],
): { options: SetupOptions; json: boolean; help: boolean } {
  const values = parse(argv);
  const config = configFromEnv(env);
  const arch = values.arch === undefined ? config.targetArch : normalizeArch(values.arch, { strict: true });
  const pinnedSha256: Record<string, string> = {};
  for (const pin of values.pin ?? []) {
    const at = pin.indexOf("=");
    if (at < 1) throw new SetupUsageError(`--pin takes NAME=SHA256, not ${JSON.stringify(pin)}`);
    pinnedSha256[pin.slice(0, at)] = pin.slice(at + 1);
  }
  const proxy =
    values.proxy === undefined
      ? proxySettingsFromEnv(env)
      : { httpProxy: values.proxy, httpsProxy: values.proxy };
  const options: SetupOptions = {
    arch,
    firecrackerVersion: values["firecracker-version"] ?? config.firecrackerVersion,
    kernelVersion: values["kernel-version"] ?? config.kernelVersion,
    firecrackerRoot: resolvePath(values["firecracker-dir"] ?? config.firecrackerRoot),
    kernelRoot: resolvePath(values["kernel-dir"] ?? config.kernelRoot),
    // KERNEL_NAME only when set: otherwise the name follows --arch (vmlinux, Image).
    ...(env.KERNEL_NAME ? { kernelName: config.kernelName } : {}),
    ...(values["kernel-url"] ? { kernelUrl: values["kernel-url"] } : {}),
    ...(values["kernel-sha256"] ? { kernelSha256: values["kernel-sha256"] } : {}),
    ...(values["release-url"] ? { releaseBaseUrl: values["release-url"] } : {}),
    ...(values["kernel-bucket-url"] ? { kernelBucketUrl: values["kernel-bucket-url"] } : {}),
    ...(values.from ? { from: resolvePath(values.from) } : {}),
    proxy,
    pinnedSha256,
    firecracker: !values["no-firecracker"],
    kernel: !values["no-kernel"],
    force: values.force ?? false,
  };
  return { options, json: values.json ?? false, help: values.help ?? false };
}

function nextSteps(options: SetupOptions, result: SetupResult): string {
  const exports: string[] = [];
  if (options.firecrackerRoot !== CONFIG_DEFAULTS.firecrackerRoot)
    exports.push(`FIRECRACKER_DIR=${options.firecrackerRoot}`);
  if (options.kernelRoot !== CONFIG_DEFAULTS.kernelRoot) exports.push(`KERNEL_DIR=${options.kernelRoot}`);
  if (result.firecrackerVersion !== CONFIG_DEFAULTS.firecrackerVersion)
    exports.push(`FIRECRACKER_VERSION=${result.firecrackerVersion}`);
  if (result.kernelVersion !== CONFIG_DEFAULTS.kernelVersion)
    exports.push(`KERNEL_VERSION=${result.kernelVersion}`);
  return exports.length === 0 ? "" : `\nsbx finds these with: export ${exports.join(" ")}\n`;
}

/** Runs `sbx setup`; returns the exit code (0 ok, 1 failed, 2 usage). */
export async function runSetupCommand(argv: string[], io: SetupIo): Promise<number> {
  let json = argv.includes("--json");
  let parsed: ReturnType<typeof setupOptionsFromCli>;
  try {
    parsed = setupOptionsFromCli(argv, io.env);
  } catch (error) {
    if (error instanceof SetupUsageError) {
      io.stderr.write(`sbx setup: ${error.message}\n\n${SETUP_USAGE}`);
      return 2;
    }
    return fail(io, json, error);
  }
  json = parsed.json;
  if (parsed.help) {
    io.stdout.write(SETUP_USAGE);
    return 0;
  }
  const mode = progressModeFor({ json, isTTY: io.stderr.isTTY });
  const reporter = createProgressReporter({ mode, stream: io.stderr as NodeJS.WritableStream });
  const abort = new AbortController();
  const onSignal = () =>
    abort.abort(new OrchestratorError("ABORTED", "interrupted; run sbx setup again to resume the download"));
  process.once("SIGINT", onSignal);
  try {
    const result = await setupArtifacts(parsed.options, {
      onProgress: (event) => reporter.update(event),
      signal: abort.signal,
    });
    reporter.close();
    io.stdout.write(
      json
        ? `${JSON.stringify({ setup: result }, null, 2)}\n`
        : `${describe("firecracker", result.firecracker)}${describe("jailer", result.jailer)}${describe("kernel", result.kernel)}${nextSteps(parsed.options, result)}`,
    );
    return 0;
  } catch (error) {
    reporter.close();
    return fail(io, json, abort.signal.aborted ? abort.signal.reason : error);
  } finally {
    process.removeListener("SIGINT", onSignal);
  }
}

function fail(io: SetupIo, json: boolean, error: unknown): number {
  printFailure(io, json, "sbx setup", error);
  return 1;
}
