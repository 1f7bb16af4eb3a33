import { readFile } from "node:fs/promises";
import { resolve as resolvePath } from "node:path";
import { parseArgs } from "node:util";
import { storeFromEnv } from "@sbx/store";
import {
  listPausedSandboxes,
  listTemplatePointers,
  type PausedSandbox,
  readBuild,
  readBuildHeader,
} from "../builds.ts";
import { configFromEnv, type OrchestratorConfig } from "../config.ts";
import {
  type ControlRequest,
  controlRequest,
  controlServerRunning,
  controlSocketPath,
  serveControl,
} from "../control.ts";
import { formatDoctorReport, runDoctor } from "../doctor.ts";
import { OrchestratorError } from "../errors.ts";
import { isImageReference } from "../image-source.ts";
import { Orchestrator } from "../orchestrator.ts";
import { checkProcessIdentity } from "../process-identity.ts";
import { createProgressReporter, progressModeFor } from "../progress.ts";
import { reclaimSandbox } from "../reclaim.ts";
import { findByIdPrefix, resolveIdPrefix } from "../sandbox-id.ts";
import { type SandboxRecord, StateDirectory } from "../state-dir.ts";
import { readTemplate, templateDrift } from "../template-build.ts";
import { copyWithSandbox, execInSandbox } from "./agent-commands.ts";
import { printFailure } from "./print-failure.ts";
import { runSetupCommand } from "./setup-command.ts";

export interface CliIo {
  stdout: { write(text: string | Uint8Array): unknown };
  stderr: { write(text: string | Uint8Array): unknown };
  env: Readonly<Record<string, string | undefined>>;
}

export const USAGE = `usage: sbx <command> [options]

commands:
  setup                            download, verify and install Firecracker, jailer and a guest kernel
                                   (sbx setup --help for its options)
  doctor                           check this host and the configured artifacts, with fixes
  serve                            run the orchestrator: owns the sandboxes, answers the commands below
  template build <oci-layout|image> build a template from an OCI image layout or an image reference
                                   (docker.io/library/alpine:3.20; Docker's credentials), only when it drifted
                                   (--name NAME [--memory MIB] [--vcpus N] [--provision FILE]
                                    [--no-network] [--ready-line REGEX] [--force] [--platform OS/ARCH[/VARIANT]])
  template ls                      list templates and the builds they point at
  template inspect <name>          a template's build: inputs, sizes, fingerprint, Firecracker version
  template rm <name>               remove a template's name (gc frees its builds when nothing needs them)
  sandbox create --template NAME   start a sandbox from a template [--alive-line REGEX]
  sandbox list (or ls)             running and paused sandboxes: state, template, memory, age, owner
  sandbox pause <id>               pause a sandbox to a diff snapshot (the VM stops; resume continues it)
  sandbox resume <paused>          resume a paused sandbox (the name \`sandbox list\` shows)
  sandbox kill <id>                stop a sandbox and remove everything it owns
  sandbox fork <id> --count N      N new sandboxes continuing from this one's state (it keeps running)
  sandbox rm <paused>              forget a paused sandbox (gc frees its build)
  sandbox exec <id> -- CMD ARGS    run a command in a sandbox (its in-guest agent); exits with its code
  sandbox cp <src> <dest>          copy a file to or from a sandbox; one side is id:/guest/path
  sandbox ports <id>               the guest ports exposed from a sandbox, with their host addresses
  sandbox expose <id> --port N     reach guest port N from the host [--publish: on a host port too]
  gc                               delete every build nothing pins; prints the bytes freed

<id> and <paused> may be any unique prefix. create, pause, resume and fork need \`sbx serve\` running;
the others work without it.
options: --json (machine-readable output), --help
configuration: environment variables, see docs/operations.md (TARGET_ARCH, FIRECRACKER_BIN, SBX_STATE_DIR, ...)
`;

const EXIT_OK = 0;
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;

class UsageError extends Error {}

interface Parsed {
  positionals: string[];
  json: boolean;
  help: boolean;
  name: string | undefined;
  template: string | undefined;
  memory: string | undefined;
  vcpus: string | undefined;
  provision: string | undefined;
  noNetwork: boolean;
  readyLine: string | undefined;
  aliveLine: string | undefined;
  force: boolean;
  platform: string | undefined;
  count: string | undefined;
  port: string | undefined;
  publish: boolean;
}

function parse(argv: string[]): Parsed {
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
        name: { type: "string" },
        template: { type: "string" },
        memory: { type: "string" },
        vcpus: { type: "string" },
        provision: { type: "string" },
        "no-network": { type: "boolean", default: false },
        "ready-line": { type: "string" },
        "alive-line": { type: "string" },
        force: { type: "boolean", default: false },
        platform: { type: "string" },
        count: { type: "string" },
        port: { type: "string" },
        publish: { type: "boolean", default: false },
      },
    });
    return {
      positionals,
      json: values.json ?? false,
      help: values.help ?? false,
      name: values.name,
      template: values.template,
      memory: values.memory,
      vcpus: values.vcpus,
      provision: values.provision,
      noNetwork: values["no-network"] ?? false,
      readyLine: values["ready-line"],
      aliveLine: values["alive-line"],
      force: values.force ?? false,
      platform: values.platform,
      count: values.count,
      port: values.port,
      publish: values.publish ?? false,
    };
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

interface ListedSandbox {
  id: string;
  state: SandboxRecord["state"];
  template: string | null;
  build: string | null;
  /** The guest memory of its build. */
  memoryBytes: number | undefined;
  createdAt: string;
  ownerPid: number;
  ownerRunning: boolean;
  processes: { role: string; pid: number; running: boolean }[];
}

async function listSandboxes(config: OrchestratorConfig) {
  const stateDir = new StateDirectory(config.stateDir);
  const { records, invalid } = await stateDir.listSandboxes();
  const sandboxes: ListedSandbox[] = [];
  for (const record of records) {
    const processes = [];
    for (const { role, identity } of record.processes) {
      processes.push({ role, pid: identity.pid, running: (await checkProcessIdentity(identity)).same });
    }
    sandboxes.push({
      id: record.id,
      state: record.state,
      template: record.template ?? null,
      build: record.build ?? null,
      memoryBytes: record.build
        ? await readBuild(config, record.build).then(
            (build) => build.memory.sizeBytes,
            () => undefined,
          )
        : undefined,
      createdAt: record.createdAt,
      ownerPid: record.owner.pid,
      ownerRunning: (await checkProcessIdentity(record.owner)).same,
      processes,
    });
  }
  return { stateDir, records, sandboxes, invalid };
}

/** Rows as aligned columns; the first row is the header. */
function table(rows: string[][]): string {
  const widths = (rows[0] ?? []).map((_, column) =>
    Math.max(...rows.map((row) => (row[column] ?? "").length)),
  );
  return `${rows
    .map((row) =>
      row
        .map((cell, i) => cell.padEnd(widths[i] ?? 0))
        .join("  ")
        .trimEnd(),
    )
    .join("\n")}\n`;
}

/** `3s`, `5m`, `2h`, `4d`: how long ago `iso` was. */
function age(iso: string, now = Date.now()): string {
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)}m`;
  if (seconds < 172_800) return `${Math.round(seconds / 3600)}h`;
  return `${Math.round(seconds / 86_400)}d`;
}

const mib = (bytes: number | undefined) =>
  bytes === undefined ? "-" : `${Math.round(bytes / 1024 / 1024)} MiB`;

function formatList(sandboxes: ListedSandbox[], paused: PausedSandbox[]): string {
  if (sandboxes.length === 0 && paused.length === 0) return "no sandboxes\n";
  const rows = [["ID", "STATE", "TEMPLATE", "MEMORY", "AGE", "OWNER"]];
  for (const s of sandboxes) {
    rows.push([
      s.id,
      s.state,
      s.template ?? "-",
      mib(s.memoryBytes),
      age(s.createdAt),
      `${s.ownerPid}${s.ownerRunning ? "" : " (gone)"}`,
    ]);
  }
  for (const p of paused) rows.push([p.id, "paused", p.template, "-", age(p.pausedAt), "-"]);
  return table(rows);
}

async function daemon(config: OrchestratorConfig, what: string): Promise<string> {
  const socketPath = controlSocketPath(config);
  if (!(await controlServerRunning(socketPath))) {
    throw new OrchestratorError(
      "NOT_AVAILABLE",
      `${what} needs the orchestrator: start \`sbx serve\` (same SBX_STATE_DIR, ${config.stateDir}) and run this again`,
    );
  }
  return socketPath;
}

async function sandboxCommand(args: Parsed, io: CliIo, config: OrchestratorConfig): Promise<number> {
  const [, action, idPrefix, ...extra] = args.positionals;
  const print = (value: unknown, text: string) =>
    io.stdout.write(args.json ? `${JSON.stringify(value, null, 2)}\n` : text);
  switch (action) {
    case "list":
    case "ls": {
      if (idPrefix !== undefined) throw new UsageError(`sandbox ${action} takes no arguments`);
      const { sandboxes, invalid } = await listSandboxes(config);
      const paused = await listPausedSandboxes(config);
      print(
        { sandboxes, paused, invalid },
        formatList(sandboxes, paused) + invalid.map((i) => `unreadable: ${i.path}: ${i.reason}\n`).join(""),
      );
      return EXIT_OK;
    }
    case "create": {
      if (idPrefix !== undefined) throw new UsageError("sandbox create takes --template NAME, not an id");
      if (!args.template) throw new UsageError("sandbox create needs --template NAME");
      const socket = await daemon(config, "sbx sandbox create");
      const created = (await controlRequest(socket, {
        op: "create",
        template: args.template,
        ...(args.aliveLine ? { alive: args.aliveLine } : {}),
      })) as { id: string; pid: number };
      print(created, `${created.id}\n`);
      return EXIT_OK;
    }
    case "pause":
    case "resume":
    case "kill": {
      if (idPrefix === undefined || extra.length > 0)
        throw new UsageError(`sandbox ${action} takes one id (or unique prefix)`);
      if (action === "kill" && !(await controlServerRunning(controlSocketPath(config)))) {
        // Nobody manages these sandboxes any more: clean one up from its record, as reclaim would.
        const { stateDir, records } = await listSandboxes(config);
        const record = findByIdPrefix(idPrefix, records);
        const { id } = record;
        if ((await checkProcessIdentity(record.owner)).same) {
          throw new OrchestratorError(
            "NOT_AVAILABLE",
            `sandbox ${id} belongs to running pid ${record.owner.pid}, which does not answer on ${controlSocketPath(config)}`,
          );
        }
        const result = await reclaimSandbox(stateDir, record);
        print(
          result,
          result.errors.length === 0
            ? `killed ${id}\n`
            : `killed ${id} partly: ${result.errors.join("; ")}\n`,
        );
        return result.errors.length === 0 ? EXIT_OK : EXIT_FAILED;
      }
      const socket = await daemon(config, `sbx sandbox ${action}`);
      if (action === "kill") {
        const killed = (await controlRequest(socket, { op: "kill", id: idPrefix })) as { id: string };
        print(killed, `killed ${killed.id}\n`);
      } else if (action === "pause") {
        const paused = (await controlRequest(socket, { op: "pause", id: idPrefix })) as {
          id: string;
          build: string;
        };
        print(paused, `paused ${paused.id} as build ${paused.build}\n`);
      } else {
        const resumed = (await controlRequest(socket, {
          op: "resume",
          paused: idPrefix,
          ...(args.aliveLine ? { alive: args.aliveLine } : {}),
        })) as { id: string };
        print(resumed, `${resumed.id}\n`);
      }
      return EXIT_OK;
    }
    case "fork": {
      if (idPrefix === undefined || extra.length > 0)
        throw new UsageError("sandbox fork takes one id (or unique prefix)");
      const count = positiveInteger(args.count, "--count") ?? 1;
      const socket = await daemon(config, "sbx sandbox fork");
      const result = (await controlRequest(socket, { op: "fork", id: idPrefix, count })) as {
        forks: { id: string }[];
      };
      print(result, result.forks.map((f) => `${f.id}\n`).join(""));
      return EXIT_OK;
    }
    case "exec": {
      if (idPrefix === undefined)
        throw new UsageError("sandbox exec takes an id (or unique prefix), then -- and a command");
      return execInSandbox(config, idPrefix, extra, { json: args.json }, io);
    }
    case "cp": {
      if (idPrefix === undefined || extra.length !== 1) throw new UsageError("sandbox cp takes <src> <dest>");
      const copied = await copyWithSandbox(config, idPrefix, extra[0] as string);
      print(copied, `copied ${copied.bytes} bytes\n`);
      return EXIT_OK;
    }
    case "ports":
    case "expose": {
      if (idPrefix === undefined || extra.length > 0)
        throw new UsageError(`sandbox ${action} takes one id (or unique prefix)`);
      const socket = await daemon(config, `sbx sandbox ${action}`);
      type Port = { guestPort: number; host: string; port: number; hostPort?: number };
      const line = (p: Port) =>
        `${p.guestPort} -> ${p.host}:${p.port}${p.hostPort === undefined ? "" : ` (host port ${p.hostPort})`}\n`;
      if (action === "ports") {
        const result = (await controlRequest(socket, { op: "ports", id: idPrefix })) as { ports: Port[] };
        print(result, result.ports.length === 0 ? "no exposed ports\n" : result.ports.map(line).join(""));
      } else {
        const port = positiveInteger(args.port, "--port");
        if (port === undefined) throw new UsageError("sandbox expose needs --port N");
        const result = (await controlRequest(socket, {
          op: "expose",
          id: idPrefix,
          port,
          publish: args.publish,
        })) as Port;
        print(result, line(result));
      }
      return EXIT_OK;
    }
    case "rm": {
      if (idPrefix === undefined || extra.length > 0)
        throw new UsageError("sandbox rm takes one paused sandbox");
      const result = (await viaServerOrLocal(config, { op: "paused-rm", paused: idPrefix }, async (o) => {
        const all = await o.pausedSandboxes();
        const id = resolveIdPrefix(
          idPrefix,
          all.map((p) => p.id),
        );
        await o.removePausedSandbox(id);
        return { id, removed: true };
      })) as { id: string };
      print(result, `removed paused sandbox ${result.id}\n`);
      return EXIT_OK;
    }
    default:
      throw new UsageError(action ? `unknown sandbox command "${action}"` : "sandbox needs a command");
  }
}

function positiveInteger(value: string | undefined, option: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value) || Number(value) < 1) throw new UsageError(`${option} takes a positive integer`);
  return Number(value);
}

async function templateBuild(layout: string, args: Parsed, io: CliIo, config: OrchestratorConfig) {
  if (!args.name) throw new UsageError("template build needs --name NAME");
  const memoryMib = positiveInteger(args.memory, "--memory");
  const vcpuCount = positiveInteger(args.vcpus, "--vcpus");
  const request = {
    name: args.name,
    ociLayout: isImageReference(layout) ? layout : resolvePath(layout),
    ...(args.platform === undefined ? {} : { platform: args.platform }),
    network: !args.noNetwork,
    ...(memoryMib === undefined ? {} : { memoryMib }),
    ...(vcpuCount === undefined ? {} : { vcpuCount }),
    ...(args.provision === undefined ? {} : { provisionScript: await readFile(args.provision, "utf8") }),
  };
  const print = (value: { rebuilt: boolean; reason: string; name: string; build?: string }) =>
    io.stdout.write(
      args.json
        ? `${JSON.stringify(value, null, 2)}\n`
        : value.rebuilt
          ? `built template ${value.name} (${value.reason})\n`
          : `template ${value.name} is current; nothing to do (--force rebuilds)\n`,
    );
  const socketPath = controlSocketPath(config);
  if (await controlServerRunning(socketPath)) {
    const result = (await controlRequest(socketPath, {
      op: "build",
      request,
      force: args.force,
      ...(args.readyLine ? { readyMarker: args.readyLine } : {}),
    })) as { rebuilt: boolean; reason: string; name: string };
    print(result);
    return EXIT_OK;
  }
  const reason = args.force ? "forced" : await templateDrift(config, request);
  if (reason === null) {
    print({ name: args.name, rebuilt: false, reason: "current" });
    return EXIT_OK;
  }
  await using orchestrator = await Orchestrator.open(config);
  // Bytes, rate and ETA: a bar on a terminal, JSON lines with --json (stderr), nothing on a pipe.
  const mode = progressModeFor({ json: args.json, isTTY: (io.stderr as { isTTY?: boolean }).isTTY });
  using progress = createProgressReporter({ mode, stream: io.stderr as NodeJS.WritableStream });
  const built = await orchestrator.buildTemplate({
    request,
    ...(args.readyLine ? { readyMarker: new RegExp(args.readyLine, "m") } : {}),
    onProgress: (event) => progress.update(event),
    onEvent: (event) => {
      // Step lines go to a plain stream only: they would tear a bar, and --json has its own lines.
      if (mode !== "none") return;
      if (event.kind === "step-start") io.stderr.write(`[${event.index + 1}/${event.total}] ${event.step}\n`);
      if (event.kind === "step-failed")
        io.stderr.write(`    ${event.step} failed after ${event.durationMs.toFixed(0)} ms\n`);
    },
  });
  print({
    name: built.manifest.template,
    build: built.id,
    rebuilt: true,
    reason,
    ...(args.json ? { manifest: built.manifest } : {}),
  });
  return EXIT_OK;
}

/** Sends `request` to a running `sbx serve`, or does the same on the state directory itself. */
async function viaServerOrLocal(
  config: OrchestratorConfig,
  request: ControlRequest,
  local: (orchestrator: Orchestrator) => Promise<unknown>,
): Promise<unknown> {
  const socketPath = controlSocketPath(config);
  if (await controlServerRunning(socketPath)) return controlRequest(socketPath, request);
  await using orchestrator = await Orchestrator.open(config);
  return local(orchestrator);
}

async function templateCommand(
  sub: string | undefined,
  rest: string[],
  args: Parsed,
  io: CliIo,
  config: OrchestratorConfig,
) {
  const print = (value: unknown, text: string) =>
    io.stdout.write(args.json ? `${JSON.stringify(value, null, 2)}\n` : text);
  switch (sub) {
    case "build":
      if (rest.length !== 1)
        throw new UsageError("template build takes one OCI image layout directory or image reference");
      return templateBuild(rest[0] as string, args, io, config);
    case "ls": {
      if (rest.length !== 0) throw new UsageError("template ls takes no arguments");
      const templates = [];
      for (const pointer of await listTemplatePointers(config)) {
        const build = await readBuild(config, pointer.build).catch((error: Error) => error);
        templates.push({
          name: pointer.name,
          build: pointer.build,
          ...(build instanceof Error ? { error: build.message } : { manifest: build }),
        });
      }
      const rows = [["NAME", "BUILD", "MEMORY", "VCPUS", "FIRECRACKER", "AGE"]];
      for (const t of templates) {
        const m = "manifest" in t ? t.manifest : undefined;
        rows.push([
          t.name,
          t.build,
          mib(m?.memory.sizeBytes),
          String(m?.boot?.vcpuCount ?? "-"),
          m?.firecrackerVersion ?? ("error" in t ? `unreadable: ${t.error}` : "-"),
          m ? age(m.createdAt) : "-",
        ]);
      }
      print(
        {
          templates: templates.map((t) => ({
            name: t.name,
            build: t.build,
            ...("error" in t
              ? { error: t.error }
              : { createdAt: t.manifest?.createdAt, memoryBytes: t.manifest?.memory.sizeBytes }),
          })),
        },
        templates.length === 0 ? "no templates\n" : table(rows),
      );
      return EXIT_OK;
    }
    case "inspect": {
      if (rest.length !== 1) throw new UsageError("template inspect takes one template name");
      const { id, directory, manifest } = await readTemplate(config, rest[0] as string);
      const header = await readBuildHeader(config, id);
      const details = {
        name: manifest.template,
        build: id,
        directory,
        manifest,
        memoryHeader: { builds: header.builds, entries: header.entries.length, blockSize: header.blockSize },
      };
      const boot = manifest.boot;
      const text = [
        `template ${manifest.template} → build ${id} (${manifest.kind}, ${manifest.createdAt})`,
        `  directory     ${directory}`,
        `  firecracker   ${manifest.firecrackerVersion}, ${manifest.arch}`,
        ...(boot
          ? [
              `  machine       ${boot.vcpuCount} vCPUs, ${boot.memoryMib} MiB, smt ${boot.smt}, huge pages ${boot.hugePages}`,
              `  cpu template  ${boot.cpuTemplate.kind === "none" ? "none" : boot.cpuTemplate.kind === "static" ? boot.cpuTemplate.name : boot.cpuTemplate.path}`,
              `  image         ${boot.ociManifestDigest}`,
              `  kernel        ${boot.kernel.path} (${boot.kernel.sha256.slice(0, 12)}…)`,
              `  command line  ${boot.kernelCommandLine}`,
            ]
          : []),
        `  fingerprint   ${String(manifest.hostFingerprint.cpu_model ?? manifest.hostFingerprint.model_name ?? "recorded")}`,
        `  network       ${manifest.network ? `TAP ${manifest.network.tapName}` : "none"}`,
        ...Object.entries(manifest.files).flatMap(([name, file]) =>
          file ? [`  ${name.padEnd(13)} ${file.sizeBytes} bytes, sha256 ${file.sha256.slice(0, 12)}…`] : [],
        ),
      ].join("\n");
      print(details, `${text}\n`);
      return EXIT_OK;
    }
    case "rm": {
      if (rest.length !== 1) throw new UsageError("template rm takes one template name");
      const name = rest[0] as string;
      await viaServerOrLocal(config, { op: "template-rm", name }, async (o) => {
        await o.removeTemplate(name);
      });
      print({ name, removed: true }, `removed template ${name} (\`sbx gc\` frees its builds)\n`);
      return EXIT_OK;
    }
    default:
      throw new UsageError(sub ? `unknown template command "${sub}"` : "template needs a command");
  }
}

async function gcCommand(args: Parsed, io: CliIo, config: OrchestratorConfig): Promise<number> {
  const report = (await viaServerOrLocal(config, { op: "gc" }, (o) => o.gc())) as {
    removed: { id: string; bytes: number }[];
    leftovers: string[];
    bytesFreed: number;
  };
  io.stdout.write(
    args.json
      ? `${JSON.stringify(report, null, 2)}\n`
      : `removed ${report.removed.length} builds and ${report.leftovers.length} leftovers, freed ${report.bytesFreed} bytes\n`,
  );
  return EXIT_OK;
}

/** `sbx serve`: runs until SIGINT or SIGTERM, then kills every sandbox it owns. */
async function serve(io: CliIo, config: OrchestratorConfig, json: boolean): Promise<number> {
  // SBX_STORE_URL (with the standard AWS variables): builds go up to the store and come down on demand.
  const store = storeFromEnv(io.env);
  const orchestrator = await Orchestrator.open(config, { checkArtifacts: true, ...(store ? { store } : {}) });
  const server = await serveControl(orchestrator);
  const socketPath = controlSocketPath(config);
  io.stdout.write(
    json
      ? `${JSON.stringify({ listening: socketPath, pid: process.pid })}\n`
      : `sbx serve: listening on ${socketPath} (pid ${process.pid})\n`,
  );
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once("SIGINT", () => resolve("SIGINT"));
    process.once("SIGTERM", () => resolve("SIGTERM"));
  });
  io.stderr.write(`sbx serve: ${signal}: stopping ${orchestrator.sandboxes.length} sandboxes\n`);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await orchestrator.close();
  return EXIT_OK;
}

async function dispatch(args: Parsed, io: CliIo): Promise<number> {
  const [command, sub, ...rest] = args.positionals;
  if (args.help || command === undefined || command === "help") {
    io.stdout.write(USAGE);
    return command === undefined && !args.help ? EXIT_USAGE : EXIT_OK;
  }
  const config = configFromEnv(io.env);
  switch (command) {
    case "doctor": {
      if (sub !== undefined) throw new UsageError("doctor takes no arguments");
      const checks = await runDoctor(config, { env: io.env });
      io.stdout.write(args.json ? `${JSON.stringify({ checks }, null, 2)}\n` : formatDoctorReport(checks));
      return checks.some((c) => c.status === "fail") ? EXIT_FAILED : EXIT_OK;
    }
    case "template":
      return templateCommand(sub, rest, args, io, config);
    case "gc":
      if (sub !== undefined) throw new UsageError("gc takes no arguments");
      return gcCommand(args, io, config);
    case "sandbox":
      return sandboxCommand(args, io, config);
    case "serve":
      if (sub !== undefined) throw new UsageError("serve takes no arguments");
      return serve(io, config, args.json);
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

/** Runs the `sbx` CLI; returns the exit code (0 ok, 1 failed, 2 usage). */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  // setup has flags of its own; it never needs the orchestrator's configuration to be complete.
  if (argv[0] === "setup") return runSetupCommand(argv.slice(1), io);
  let json = argv.includes("--json");
  try {
    const args = parse(argv);
    json = args.json;
    return await dispatch(args, io);
  } catch (error) {
    if (error instanceof UsageError) {
      io.stderr.write(`sbx: ${error.message}\n\n${USAGE}`);
      return EXIT_USAGE;
    }
    printFailure(io, json, "sbx", error);
    return EXIT_FAILED;
  }
}
