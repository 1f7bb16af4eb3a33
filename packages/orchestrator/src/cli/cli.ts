import { parseArgs } from "node:util";
import { configFromEnv, type OrchestratorConfig } from "../config.ts";
import { formatDoctorReport, runDoctor } from "../doctor.ts";
import { OrchestratorError } from "../errors.ts";
import { checkProcessIdentity } from "../process-identity.ts";
import { reclaimSandbox } from "../reclaim.ts";
import { resolveIdPrefix } from "../sandbox-id.ts";
import { type SandboxRecord, StateDirectory } from "../state-dir.ts";

export interface CliIo {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
  env: Readonly<Record<string, string | undefined>>;
}

export const USAGE = `usage: sbx <command> [options]

commands:
  doctor                           check this host and the configured artifacts, with fixes
  template build <oci-layout>      build a template from an OCI image layout (--name NAME)
  sandbox create --template NAME   start a sandbox from a template
  sandbox list                     list the sandboxes in the state directory
  sandbox pause <id>               pause a sandbox to a diff snapshot
  sandbox resume <id>              resume a paused sandbox
  sandbox kill <id>                stop a sandbox and remove everything it owns

<id> may be any unique prefix of a sandbox id.
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
      },
    });
    return {
      positionals,
      json: values.json ?? false,
      help: values.help ?? false,
      name: values.name,
      template: values.template,
    };
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

function notAvailable(what: string): OrchestratorError {
  return new OrchestratorError(
    "NOT_AVAILABLE",
    `${what} is not available yet in this build of sbx: it needs the Firecracker client, page-fault server, rootfs and CPU-template packages wired into the orchestrator`,
  );
}

interface ListedSandbox {
  id: string;
  state: SandboxRecord["state"];
  template: string | null;
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
      createdAt: record.createdAt,
      ownerPid: record.owner.pid,
      ownerRunning: (await checkProcessIdentity(record.owner)).same,
      processes,
    });
  }
  return { stateDir, records, sandboxes, invalid };
}

function formatList(sandboxes: ListedSandbox[]): string {
  if (sandboxes.length === 0) return "no sandboxes\n";
  const rows = [["ID", "STATE", "TEMPLATE", "OWNER", "CREATED"]];
  for (const s of sandboxes) {
    rows.push([
      s.id,
      s.state,
      s.template ?? "-",
      `${s.ownerPid}${s.ownerRunning ? "" : " (gone)"}`,
      s.createdAt,
    ]);
  }
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
  return `${rows
    .map((row) =>
      row
        .map((cell, i) => cell.padEnd(widths[i]!))
        .join("  ")
        .trimEnd(),
    )
    .join("\n")}\n`;
}

async function sandboxCommand(args: Parsed, io: CliIo, config: OrchestratorConfig): Promise<number> {
  const [, action, idPrefix, ...extra] = args.positionals;
  const print = (value: unknown, text: string) =>
    io.stdout.write(args.json ? `${JSON.stringify(value, null, 2)}\n` : text);
  switch (action) {
    case "list": {
      if (idPrefix !== undefined) throw new UsageError("sandbox list takes no arguments");
      const { sandboxes, invalid } = await listSandboxes(config);
      print(
        { sandboxes, invalid },
        formatList(sandboxes) + invalid.map((i) => `unreadable: ${i.path}: ${i.reason}\n`).join(""),
      );
      return EXIT_OK;
    }
    case "create":
      if (idPrefix !== undefined) throw new UsageError("sandbox create takes --template NAME, not an id");
      if (!args.template) throw new UsageError("sandbox create needs --template NAME");
      throw notAvailable("sbx sandbox create");
    case "pause":
    case "resume":
    case "kill": {
      if (idPrefix === undefined || extra.length > 0)
        throw new UsageError(`sandbox ${action} takes one id (or unique prefix)`);
      const { stateDir, records } = await listSandboxes(config);
      const id = resolveIdPrefix(
        idPrefix,
        records.map((r) => r.id),
      );
      const record = records.find((r) => r.id === id)!;
      const ownerRunning = (await checkProcessIdentity(record.owner)).same;
      if (action === "kill" && !ownerRunning) {
        // Nobody manages this sandbox any more: clean it up from its record, as reclaim would.
        const result = await reclaimSandbox(stateDir, record);
        print(
          result,
          result.errors.length === 0
            ? `killed ${id}\n`
            : `killed ${id} partly: ${result.errors.join("; ")}\n`,
        );
        return result.errors.length === 0 ? EXIT_OK : EXIT_FAILED;
      }
      throw notAvailable(`sbx sandbox ${action} (${id}, owned by running pid ${record.owner.pid})`);
    }
    default:
      throw new UsageError(action ? `unknown sandbox command "${action}"` : "sandbox needs a command");
  }
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
      const checks = await runDoctor(config);
      io.stdout.write(args.json ? `${JSON.stringify({ checks }, null, 2)}\n` : formatDoctorReport(checks));
      return checks.some((c) => c.status === "fail") ? EXIT_FAILED : EXIT_OK;
    }
    case "template": {
      if (sub !== "build")
        throw new UsageError(sub ? `unknown template command "${sub}"` : "template needs a command");
      if (rest.length !== 1)
        throw new UsageError("template build takes one OCI image layout (a directory or .tar)");
      throw notAvailable("sbx template build");
    }
    case "sandbox":
      return sandboxCommand(args, io, config);
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

/** Runs the `sbx` CLI; returns the exit code (0 ok, 1 failed, 2 usage). */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
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
    const code =
      error instanceof OrchestratorError ? error.code : ((error as { code?: string }).code ?? "UNEXPECTED");
    const message = (error as Error).message ?? String(error);
    if (json) {
      const details = error instanceof OrchestratorError ? error.details : {};
      io.stdout.write(`${JSON.stringify({ error: { code, message, details } }, null, 2)}\n`);
    } else {
      io.stderr.write(`sbx: ${message}\n`);
    }
    return EXIT_FAILED;
  }
}
