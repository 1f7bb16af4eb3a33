import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { mkdtemp, open, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Writable } from "node:stream";
import {
  type Arch,
  ArchError,
  archTraits,
  detectBinaryArch,
  hostArch,
  type Logger,
  silentLogger,
} from "@sbx/arch";
import { createFirecrackerClient, type FirecrackerClient } from "./client.ts";
import {
  ConsoleCapture,
  type ConsoleLimits,
  type ConsoleMatch,
  type WaitForConsoleOptions,
} from "./console-capture.ts";
import { FirecrackerApiError, FirecrackerLaunchError } from "./errors.ts";
import {
  childrenOf,
  type Jail,
  type JailLaunchOptions,
  jailedExitStatus,
  jailedVmPid,
  type PreparedJail,
} from "./jail.ts";
import { prepareJailedFiles } from "./jailed-files.ts";
import { type FullVmConfiguration, fullVmConfigurationSchema } from "./schemas.ts";

/** What `launchFirecracker` starts: the binary, arch, API socket, config file or API mode, jail, timeouts. */
export interface LaunchFirecrackerOptions {
  /** The Firecracker executable (checked to be an ELF of `arch`). */
  binary: string;
  /**
   * Arguments placed before Firecracker's own, for wrappers (e.g. `node fake-firecracker.js` in tests,
   * where `binary` is Node itself).
   */
  binaryArgs?: readonly string[];
  /** VM id (`--id`): alphanumerics and hyphens, at most 64 characters. */
  id: string;
  /** Target arch; default the host's. The binary must match it. */
  arch?: Arch;
  /** Extra Firecracker arguments, appended last. */
  args?: readonly string[];
  /** API socket path (at most 107 bytes); default a fresh temp dir. Must not exist yet. */
  socketPath?: string;
  /**
   * `--config-file`: a path to a JSON file, or a config object (written to a temp file). Either is
   * validated with the full VM config schema first. Firecracker then boots the VM on its own.
   */
  configFile?: string | FullVmConfiguration;
  /** `--log-path` (created if missing; kept afterwards). */
  logPath?: string;
  /** `--metrics-path` (created if missing; kept afterwards); read it with `readMetricsFile`. */
  metricsPath?: string;
  /** Aborting before ready fails the launch; aborting later discards the VM (SIGTERM, then SIGKILL). */
  signal?: AbortSignal;
  /** The VM will be restored from a snapshot over userfaultfd (arm64 then needs a seccomp choice). */
  uffdRestore?: boolean;
  /** Allow `--no-seccomp` where the arch needs it (arm64 UFFD restore). */
  allowNoSeccomp?: boolean | undefined;
  /** A compiled seccomp filter (`--seccomp-filter`). */
  seccompFilter?: string | undefined;
  /** How long the API socket may take to answer `GET /`; default 10 s. */
  readyTimeoutMs?: number;
  /** Bounds of the captured console. */
  console?: ConsoleLimits;
  /** Passed to the API client (e.g. a known `version`, a default `timeoutMs`). */
  client?: { version?: string; timeoutMs?: number };
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  logger?: Logger;
  /**
   * Kill Firecracker when the Node process that launched it dies, SIGKILL included: the command runs
   * under `setpriv --pdeathsig KILL` (util-linux). Default true. The death signal belongs to the process
   * Node spawns and survives exec, so wrappers in `binaryArgs` must exec in place (nsenter, `unshare`
   * without `--fork`, `sh -c '... exec "$@"'`), as sbx's own do. Turn it off only for a VM that must
   * outlive its owner (and then own its cleanup elsewhere).
   */
  dieWithOwner?: boolean | undefined;
  /** The setpriv used for `dieWithOwner`; default `/usr/bin/setpriv`. */
  setprivBinary?: string;
  /**
   * Run Firecracker under the jailer: its own chroot, uid/gid, cgroups, network namespace and pid
   * namespace. Paths Firecracker sees (API calls, `args`) are then paths inside the chroot; place files
   * with `jail.files` or the handle's `jail.place()`. `logPath`/`metricsPath` are hard-linked in,
   * `configFile` and `seccompFilter` are put in. `binaryArgs` and `socketPath` do not apply.
   */
  jail?: JailLaunchOptions | undefined;
}

/** How a Firecracker process ended: its exit code or the signal. */
export interface FirecrackerExit {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
}

/** How `FirecrackerProcess.kill` stops Firecracker: the grace period before SIGKILL, or SIGTERM at once. */
export interface KillOptions {
  /** Time between the polite request (SendCtrlAltDel or SIGTERM) and SIGKILL; default 3000 ms. */
  graceMs?: number;
  /** The VM is being thrown away: skip SendCtrlAltDel and send SIGTERM at once. */
  discard?: boolean;
}

/** A launched Firecracker: pid, API client, console, exit promise, jail; disposing it stops it and removes what it owned. */
export interface FirecrackerProcess extends AsyncDisposable {
  /** Firecracker's pid (on the host; under the jailer, not the jailer's wrapper). */
  readonly pid: number;
  /** The jail, when launched with `jail`: its chroot, cgroups, `hostPath()` and `place()`. */
  readonly jail: Jail | undefined;
  readonly id: string;
  readonly arch: Arch;
  readonly socketPath: string;
  /** The typed API client bound to this process's socket. */
  readonly client: FirecrackerClient;
  /** Firecracker's stdout (the guest serial console and, without `logPath`, its log), line by line. */
  readonly console: ConsoleCapture;
  /** Firecracker's stderr, line by line. */
  readonly stderr: ConsoleCapture;
  /** Firecracker's stdin, an open pipe: bytes written here reach the guest's serial console input. */
  readonly stdin: Writable;
  /** Waits for a console line matching `pattern` (e.g. a guest's ready marker). */
  waitForConsole(pattern: string | RegExp, options: WaitForConsoleOptions): Promise<ConsoleMatch>;
  /** Resolves once the process exited and its output was read; never rejects. */
  readonly exited: Promise<FirecrackerExit>;
  /** The exit status once known. */
  readonly exitStatus: FirecrackerExit | undefined;
  /**
   * Stops Firecracker: SendCtrlAltDel when the arch has it and the VM runs (unless `discard`),
   * else SIGTERM; SIGKILL after `graceMs`. Then removes the socket and temp files, and a jail's
   * directory and cgroups. Idempotent.
   */
  kill(options?: KillOptions): Promise<FirecrackerExit>;
  /** `kill({ discard: true, graceMs: 1000 })`. */
  [Symbol.asyncDispose](): Promise<void>;
}

const ID_PATTERN = /^[A-Za-z0-9-]{1,64}$/;
const SETPRIV_BINARY = "/usr/bin/setpriv";
const MAX_SOCKET_PATH_BYTES = 107;
const OUTPUT_LINES_IN_ERRORS = 20;

function sleep(ms: number): Promise<void> {
  return new Promise((resolvePromise) => setTimeout(resolvePromise, ms));
}

async function ensureFile(path: string): Promise<void> {
  const handle = await open(path, "a");
  await handle.close();
}

/** Validates a full VM config (as for `--config-file`) and returns it parsed. */
export function validateVmConfigFile(config: unknown, where = "config"): FullVmConfiguration {
  const parsed = fullVmConfigurationSchema.safeParse(config);
  if (!parsed.success) {
    const issues = parsed.error.issues
      .slice(0, 5)
      .map((issue) => `${issue.path.join(".") || "(root)"}: ${issue.message}`)
      .join("; ");
    throw new FirecrackerLaunchError(
      "CONFIG_INVALID",
      `${where} is not a valid Firecracker VM config: ${issues}`,
      {
        cause: parsed.error,
      },
    );
  }
  return parsed.data;
}

async function checkBinary(binary: string, arch: Arch): Promise<void> {
  const info = await stat(binary).catch(() => undefined);
  if (!info?.isFile()) {
    throw new FirecrackerLaunchError(
      "BINARY_NOT_FOUND",
      `Firecracker binary ${binary} does not exist or is not a file; set the path to an upstream Firecracker build (see DEVELOPERS.md, "Real Firecracker")`,
      { details: { binary } },
    );
  }
  let detected: Awaited<ReturnType<typeof detectBinaryArch>>;
  try {
    detected = await detectBinaryArch(binary);
  } catch (cause) {
    throw new FirecrackerLaunchError(
      "BINARY_ARCH_MISMATCH",
      `cannot use ${binary} as Firecracker for ${arch}: ${(cause as Error).message}`,
      { cause, details: { binary, arch } },
    );
  }
  if (detected.format !== "elf" || detected.arch !== arch) {
    throw new FirecrackerLaunchError(
      "BINARY_ARCH_MISMATCH",
      `${binary} is a ${detected.arch} ${detected.format}, but the target arch is ${arch}; use the Firecracker release for ${archTraits(arch).unameMachine}`,
      { details: { binary, arch, detected } },
    );
  }
}

/**
 * Starts a Firecracker process and resolves once its API socket answers `GET /`. The binary is checked
 * to be of the target arch and the arch's required arguments are added. If the process exits first, the
 * promise rejects with a {@link FirecrackerLaunchError} carrying the exit status and its last output lines.
 */
export async function launchFirecracker(options: LaunchFirecrackerOptions): Promise<FirecrackerProcess> {
  const logger = options.logger ?? silentLogger;
  const arch = options.arch ?? hostArch();
  const { id } = options;
  if (!ID_PATTERN.test(id)) {
    throw new FirecrackerLaunchError(
      "INVALID_OPTIONS",
      `id ${JSON.stringify(id)} must be 1-64 alphanumerics or hyphens`,
      {
        details: { id },
      },
    );
  }
  if (options.signal?.aborted) {
    throw new FirecrackerLaunchError("ABORTED", `launching Firecracker ${id} was aborted`, {
      cause: options.signal.reason,
    });
  }
  await checkBinary(options.binary, arch);
  let archArgs: string[];
  try {
    archArgs = archTraits(arch).firecrackerArgs({
      uffdRestore: options.uffdRestore ?? false,
      allowNoSeccomp: options.allowNoSeccomp,
      seccompFilter: options.seccompFilter,
      logger,
    });
  } catch (cause) {
    if (cause instanceof ArchError) {
      throw new FirecrackerLaunchError("INVALID_OPTIONS", cause.message, { cause, details: { arch } });
    }
    throw cause;
  }

  let prepared: PreparedJail | undefined;
  let configObject: FullVmConfiguration | undefined;
  if (typeof options.configFile === "string") {
    let text: string;
    try {
      text = await readFile(options.configFile, "utf8");
    } catch (cause) {
      throw new FirecrackerLaunchError(
        "CONFIG_INVALID",
        `cannot read config file ${options.configFile}: ${(cause as Error).message}`,
        {
          cause,
        },
      );
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (cause) {
      throw new FirecrackerLaunchError(
        "CONFIG_INVALID",
        `config file ${options.configFile} is not JSON: ${(cause as Error).message}`,
        {
          cause,
        },
      );
    }
    validateVmConfigFile(json, `config file ${options.configFile}`);
  } else if (options.configFile !== undefined) {
    configObject = validateVmConfigFile(options.configFile, "configFile");
  }

  if (options.jail && (options.socketPath !== undefined || options.binaryArgs !== undefined)) {
    throw new FirecrackerLaunchError(
      "INVALID_OPTIONS",
      "a jailed launch takes neither socketPath (the API socket lives in the chroot) nor binaryArgs (the jailer execs the binary itself)",
      { details: { id } },
    );
  }
  const setprivBinary = options.setprivBinary ?? SETPRIV_BINARY;
  const dieWithOwner = options.dieWithOwner ?? true;
  if (dieWithOwner && !(await stat(setprivBinary).catch(() => undefined))?.isFile()) {
    throw new FirecrackerLaunchError(
      "INVALID_OPTIONS",
      `${setprivBinary} (util-linux setpriv) is missing: it makes Firecracker die with its owner; install util-linux, pass setprivBinary, or dieWithOwner: false`,
      { details: { setprivBinary } },
    );
  }
  if (options.jail) {
    prepared = await prepareJailedFiles(
      { ...options, jail: options.jail },
      id,
      configObject,
      archArgs,
      arch,
      logger,
    );
  }

  if (options.socketPath !== undefined) {
    if (Buffer.byteLength(options.socketPath) > MAX_SOCKET_PATH_BYTES) {
      throw new FirecrackerLaunchError(
        "INVALID_OPTIONS",
        `socketPath is ${Buffer.byteLength(options.socketPath)} bytes; Unix socket paths are limited to ${MAX_SOCKET_PATH_BYTES}`,
        { details: { socketPath: options.socketPath } },
      );
    }
    if (await stat(options.socketPath).catch(() => undefined)) {
      throw new FirecrackerLaunchError(
        "INVALID_OPTIONS",
        `socketPath ${options.socketPath} already exists (another Firecracker, or a stale socket); Firecracker refuses to bind it: remove it or choose another path`,
        { details: { socketPath: options.socketPath } },
      );
    }
  }

  // Made on first use: only an unjailed launch without a socketPath, or with a config object, needs it.
  let tempDir: string | undefined;
  const inTempDir = async (name: string): Promise<string> => {
    tempDir ??= await mkdtemp(join(tmpdir(), `sbx-fc-${id.slice(0, 24)}-`));
    return join(tempDir, name);
  };
  const socketPath = prepared
    ? prepared.command.socketPath
    : resolve(options.socketPath ?? (await inTempDir("api.sock")));
  let configPath = typeof options.configFile === "string" ? options.configFile : undefined;
  try {
    if (configObject !== undefined && !prepared) {
      configPath = await inTempDir("vm-config.json");
      await writeFile(configPath, JSON.stringify(configObject), { mode: 0o600 });
    }
    if (options.logPath) await ensureFile(options.logPath);
    if (options.metricsPath) await ensureFile(options.metricsPath);
  } catch (cause) {
    if (tempDir) await rm(tempDir, { recursive: true, force: true });
    await prepared?.remove();
    throw new FirecrackerLaunchError(
      "SPAWN_FAILED",
      `preparing files for Firecracker failed: ${(cause as Error).message}`,
      {
        cause,
      },
    );
  }

  const argv = [
    ...(options.binaryArgs ?? []),
    "--api-sock",
    socketPath,
    "--id",
    id,
    ...archArgs,
    ...(options.logPath ? ["--log-path", options.logPath] : []),
    ...(options.metricsPath ? ["--metrics-path", options.metricsPath] : []),
    ...(configPath ? ["--config-file", configPath] : []),
    ...(options.args ?? []),
  ];
  const command = prepared
    ? { binary: prepared.binary, args: prepared.args }
    : { binary: options.binary, args: argv };
  const spawned = dieWithOwner
    ? { binary: setprivBinary, args: ["--pdeathsig", "KILL", "--", command.binary, ...command.args] }
    : command;
  logger.debug?.({ binary: spawned.binary, argv: spawned.args, id }, "starting Firecracker");

  const child: ChildProcessWithoutNullStreams = spawn(spawned.binary, spawned.args, {
    stdio: ["pipe", "pipe", "pipe"],
    env: options.env ?? process.env,
    cwd: options.cwd,
  });
  const consoleCapture = new ConsoleCapture(options.console);
  const stderrCapture = new ConsoleCapture({ maxLines: 1000, maxLineBytes: options.console?.maxLineBytes });
  consoleCapture.attach(child.stdout);
  stderrCapture.attach(child.stderr);
  // Firecracker's serial console reads stdin; it stays an open pipe until the process is gone.
  child.stdin.on("error", () => {});
  let spawnError: Error | undefined;
  let exitStatus: FirecrackerExit | undefined;
  const exited = new Promise<FirecrackerExit>((resolveExit) => {
    child.once("error", (error) => {
      spawnError = error;
      // A failed spawn emits "close" too, but not on every Node version: settle here as well.
      if (child.pid === undefined) {
        exitStatus = { exitCode: null, signal: null };
        consoleCapture.end();
        stderrCapture.end();
        resolveExit(exitStatus);
      }
    });
    child.once("close", (exitCode, signal) => {
      exitStatus ??= prepared ? jailedExitStatus(exitCode, signal) : { exitCode, signal };
      consoleCapture.end();
      stderrCapture.end();
      child.stdin.destroy();
      resolveExit(exitStatus);
    });
  });

  const outputTail = (): string[] => [
    ...consoleCapture.lines(OUTPUT_LINES_IN_ERRORS),
    ...stderrCapture.lines(OUTPUT_LINES_IN_ERRORS).map((line) => `stderr: ${line}`),
  ];

  const client = createFirecrackerClient({ socketPath, arch, ...options.client });

  let cleaned: Promise<void> | undefined;
  const cleanup = (): Promise<void> => {
    cleaned ??= (async () => {
      try {
        await (client as Partial<AsyncDisposable>)[Symbol.asyncDispose]?.call(client);
      } catch {
        // closing idle keep-alive connections of a dead process cannot fail in a way that matters
      }
      await rm(socketPath, { force: true }).catch(() => {});
      if (tempDir) await rm(tempDir, { recursive: true, force: true }).catch(() => {});
      if (prepared) {
        const { leftCgroups } = await prepared.remove();
        if (leftCgroups.length > 0)
          logger.warn?.({ id, leftCgroups }, "jail cgroups still busy; left behind");
      }
    })();
    return cleaned;
  };

  let vmPid: number | undefined = prepared ? undefined : child.pid;
  // Under the jailer, Node's child is unshare, which blocks SIGTERM: signal Firecracker itself. Before
  // its pid is known, SIGKILL to unshare takes the whole pid namespace down (the init's death signal).
  const signalVm = (signal: NodeJS.Signals): void => {
    if (!prepared) {
      child.kill(signal);
      return;
    }
    if (vmPid === undefined) {
      child.kill("SIGKILL");
      return;
    }
    try {
      process.kill(vmPid, signal);
    } catch {
      // already gone
    }
  };

  let killing: Promise<FirecrackerExit> | undefined;
  const kill = (killOptions: KillOptions = {}): Promise<FirecrackerExit> => {
    killing ??= (async () => {
      const graceMs = killOptions.graceMs ?? 3000;
      if (!exitStatus && child.pid !== undefined) {
        let politeSent = false;
        if (!killOptions.discard && arch === "amd64") {
          const callTimeout = Math.max(50, Math.min(1000, graceMs));
          try {
            const info = await client.describeInstance({ timeoutMs: callTimeout });
            if (info.state === "Running" && !exitStatus) {
              await client.createSyncAction({ action_type: "SendCtrlAltDel" }, { timeoutMs: callTimeout });
              politeSent = true;
              logger.debug?.({ id, pid: child.pid }, "sent SendCtrlAltDel");
            }
          } catch (cause) {
            logger.debug?.(
              { id, err: (cause as Error).message },
              "SendCtrlAltDel not possible; using SIGTERM",
            );
          }
        }
        if (!politeSent && !exitStatus) signalVm("SIGTERM");
        let timer: NodeJS.Timeout | undefined;
        const inTime = await Promise.race([
          exited.then(() => true),
          new Promise<boolean>((resolveTimer) => {
            timer = setTimeout(() => resolveTimer(false), graceMs);
          }),
        ]);
        clearTimeout(timer);
        if (!inTime && !exitStatus) {
          logger.warn?.({ id, pid: child.pid, graceMs }, "Firecracker did not stop in time; sending SIGKILL");
          signalVm("SIGKILL");
        }
      }
      const status = await exited;
      await cleanup();
      return status;
    })();
    return killing;
  };

  const onAbort = () => void kill({ discard: true, graceMs: 1000 });
  const failLaunch = async (error: FirecrackerLaunchError): Promise<never> => {
    options.signal?.removeEventListener("abort", onAbort);
    await kill({ discard: true, graceMs: 1000 });
    throw error;
  };

  // Ready = the socket answers a request; the file existing is not enough.
  const readyTimeoutMs = options.readyTimeoutMs ?? 10_000;
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (spawnError && child.pid === undefined) {
      return failLaunch(
        new FirecrackerLaunchError("SPAWN_FAILED", `cannot start ${options.binary}: ${spawnError.message}`, {
          cause: spawnError,
        }),
      );
    }
    if (exitStatus) {
      await exited;
      const how = exitStatus.signal
        ? `was killed by ${exitStatus.signal}`
        : `exited with status ${exitStatus.exitCode}`;
      const output = outputTail();
      return failLaunch(
        new FirecrackerLaunchError(
          "EXITED_BEFORE_READY",
          `Firecracker (${options.binary}, id ${id}) ${how} before its API socket ${socketPath} answered; last output:\n${output.join("\n") || "(none)"}`,
          { exitCode: exitStatus.exitCode, signal: exitStatus.signal, output, details: { socketPath, argv } },
        ),
      );
    }
    if (options.signal?.aborted) {
      return failLaunch(
        new FirecrackerLaunchError("ABORTED", `launching Firecracker ${id} was aborted`, {
          cause: options.signal.reason,
          output: outputTail(),
        }),
      );
    }
    if (Date.now() >= deadline) {
      return failLaunch(
        new FirecrackerLaunchError(
          "READY_TIMEOUT",
          `Firecracker ${id} did not answer on ${socketPath} within ${readyTimeoutMs} ms; last output:\n${outputTail().join("\n") || "(none)"}`,
          { output: outputTail(), details: { socketPath, readyTimeoutMs } },
        ),
      );
    }
    const attemptMs = Math.max(50, Math.min(1000, deadline - Date.now()));
    const ready = await client.describeInstance({ timeoutMs: attemptMs, signal: options.signal }).then(
      () => true,
      (cause: unknown) => cause instanceof FirecrackerApiError,
    );
    if (ready) break;
    await Promise.race([sleep(10), exited]);
  }

  // The socket answered, so the spawn succeeded and Node has the child's pid.
  const childPid = child.pid;
  if (childPid === undefined) {
    return failLaunch(
      new FirecrackerLaunchError(
        "SPAWN_FAILED",
        `Firecracker ${id} answered on ${socketPath}, but Node reports no pid for ${spawned.binary}`,
        { output: outputTail() },
      ),
    );
  }
  const pid = prepared ? await jailedVmPid(childPid, options.binary) : childPid;
  if (pid === undefined) {
    return failLaunch(
      new FirecrackerLaunchError(
        "JAIL_SETUP_FAILED",
        `the jailed Firecracker ${id} answered, but no Firecracker process was found under the jail's pid namespace (children of ${childPid}: ${(await childrenOf(childPid)).join(", ") || "none"})`,
        { output: outputTail() },
      ),
    );
  }
  vmPid = pid;

  if (options.signal) {
    if (options.signal.aborted) onAbort();
    else options.signal.addEventListener("abort", onAbort, { once: true });
    void exited.then(() => options.signal?.removeEventListener("abort", onAbort));
  }
  // Firecracker may also die on its own later: still remove what we created.
  void exited.then(() => {
    if (!killing) void kill();
  });

  return {
    pid,
    jail: prepared?.jail,
    id,
    arch,
    socketPath,
    client,
    console: consoleCapture,
    stderr: stderrCapture,
    stdin: child.stdin,
    waitForConsole: (pattern, waitOptions) => consoleCapture.waitFor(pattern, waitOptions),
    exited,
    get exitStatus() {
      return exitStatus;
    },
    kill,
    async [Symbol.asyncDispose]() {
      await kill({ discard: true, graceMs: 1000 });
    },
  };
}
