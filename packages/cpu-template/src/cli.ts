// sbx-cpu-template: fingerprint | normalize <fp...> | recommend <fp...> | check --source A --target B
// [--template T] | validate <template>. JSON on stdout (--pretty for people); exit 1 when a check is
// incompatible or a template invalid, 2 on bad usage.
import { readFileSync } from "node:fs";
import { checkCompatibility } from "./compat.ts";
import { CpuTemplateError } from "./errors.ts";
import { type Fingerprint, readFingerprintFile } from "./fingerprint.ts";
import { hostFingerprint } from "./host.ts";
import { normalizeFleet } from "./normalize.ts";
import { recommendTemplate } from "./recommend.ts";
import { parseCustomCpuTemplate } from "./schema.ts";

export interface CliIo {
  out(text: string): void;
  err(text: string): void;
}

export const USAGE = `usage: sbx-cpu-template <command> [--pretty]
  fingerprint                                   this host's fingerprint (reads /dev/kvm)
  normalize <fingerprint.json...>               a custom template exposing only what every host has
  recommend <fingerprint.json...>               the static template covering the fleet, else the normalized one
  check --source <fp> --target <fp> [--template <t>]   can a snapshot move from source to target
  validate <template.json>                      validate a custom CPU template`;

function toJson(value: unknown, pretty: boolean): string {
  return JSON.stringify(
    value,
    (_, v) => {
      if (typeof v === "bigint") return `0x${v.toString(16)}`;
      if (v instanceof Map) return Object.fromEntries(v);
      return v;
    },
    pretty ? 2 : undefined,
  );
}

function fingerprintSummary(f: Fingerprint) {
  return {
    arch: f.arch,
    vendor: f.vendor,
    cpu: f.cpu,
    kernelVersion: f.kernelVersion,
    microcodeVersion: f.microcodeVersion,
    cpuid: f.cpuid,
    msrs: f.msrs,
  };
}

export function runCli(argv: readonly string[], io: CliIo): number {
  const pretty = argv.includes("--pretty");
  const args = argv.filter((a) => a !== "--pretty");
  const [command, ...rest] = args;
  const option = (name: string) => {
    const at = rest.indexOf(name);
    return at >= 0 ? rest[at + 1] : undefined;
  };
  try {
    switch (command) {
      case "fingerprint":
        io.out(toJson(fingerprintSummary(hostFingerprint()), pretty));
        return 0;
      case "normalize":
      case "recommend": {
        if (rest.length === 0) throw new UsageError(`${command} needs fingerprint files`);
        const fleet = rest.map(readFingerprintFile);
        io.out(toJson(command === "normalize" ? normalizeFleet(fleet) : recommendTemplate(fleet), pretty));
        return 0;
      }
      case "check": {
        const source = option("--source");
        const target = option("--target");
        if (!source || !target) throw new UsageError("check needs --source and --target");
        const templatePath = option("--template");
        const template = templatePath
          ? parseCustomCpuTemplate(JSON.parse(readFileSync(templatePath, "utf8")))
          : undefined;
        const verdict = checkCompatibility({
          source: readFingerprintFile(source),
          target: readFingerprintFile(target),
          ...(template ? { template } : {}),
        });
        io.out(toJson(verdict, pretty));
        return verdict.compatible ? 0 : 1;
      }
      case "validate": {
        const path = rest[0];
        if (!path) throw new UsageError("validate needs a template file");
        parseCustomCpuTemplate(JSON.parse(readFileSync(path, "utf8")));
        io.out(toJson({ valid: true, path }, pretty));
        return 0;
      }
      default:
        throw new UsageError(command ? `unknown command ${command}` : "no command");
    }
  } catch (error) {
    if (error instanceof UsageError) {
      io.err(`${error.message}\n${USAGE}`);
      return 2;
    }
    const code = error instanceof CpuTemplateError ? error.code : "ERROR";
    io.out(toJson({ error: code, message: (error as Error).message }, pretty));
    return 1;
  }
}

class UsageError extends Error {}
