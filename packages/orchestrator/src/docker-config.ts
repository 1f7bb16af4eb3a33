// Registry credentials the way `docker login` leaves them: ~/.docker/config.json `auths`, and
// credential helpers (`credHelpers` per registry, `credsStore` for the rest).
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { type Logger, silentLogger } from "@sbx/arch";
import type { RegistryAuth } from "@sbx/rootfs";
import { z } from "zod";
import { OrchestratorError } from "./errors.ts";

const MAX_CONFIG_BYTES = 1024 * 1024;
const MAX_HELPER_OUTPUT = 64 * 1024;
const HELPER_TIMEOUT_MS = 15_000;
/** Docker Hub's key in config.json and the server URL its credential helpers are asked about. */
const DOCKER_HUB_SERVER = "https://index.docker.io/v1/";
const DOCKER_HUB_NAMES = new Set(["docker.io", "index.docker.io", "registry-1.docker.io"]);

const authEntrySchema = z.looseObject({
  auth: z.string().optional(),
  username: z.string().optional(),
  password: z.string().optional(),
  identitytoken: z.string().optional(),
  registrytoken: z.string().optional(),
});

const helperName = z
  .string()
  .regex(/^[A-Za-z0-9_.-]{1,64}$/, "a credential helper name is letters, digits, _ . -");

export const dockerConfigSchema = z.looseObject({
  auths: z.record(z.string(), authEntrySchema).optional(),
  credHelpers: z.record(z.string(), helperName).optional(),
  credsStore: helperName.optional(),
});
export type DockerConfig = z.infer<typeof dockerConfigSchema>;

const helperAnswerSchema = z.looseObject({ Username: z.string(), Secret: z.string() });

export interface DockerCredentialOptions {
  /** The config file (default location: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`). */
  configPath: string;
  /** The environment credential helpers run with (their PATH finds `docker-credential-<name>`). */
  helperEnv?: Readonly<Record<string, string | undefined>>;
  logger?: Logger;
}

/** The config file Docker itself would read: DOCKER_CONFIG, else HOME/.docker. */
export function dockerCredentialOptionsFromEnv(
  env: Readonly<Record<string, string | undefined>>,
): DockerCredentialOptions {
  const dir = env.DOCKER_CONFIG || join(env.HOME || "/root", ".docker");
  return { configPath: join(dir, "config.json"), helperEnv: { PATH: env.PATH, HOME: env.HOME } };
}

/** `https://host:5000/v1/` → `host:5000`; Docker Hub's many names → `docker.io`. */
export function normalizeRegistryKey(key: string): string {
  const host = key
    .trim()
    .replace(/^[a-z]+:\/\//i, "")
    .replace(/\/.*$/, "")
    .toLowerCase();
  return DOCKER_HUB_NAMES.has(host) ? "docker.io" : host;
}

/** Reads and validates the config file; a missing one is no credentials, a broken one an error. */
export async function readDockerConfig(path: string): Promise<DockerConfig | undefined> {
  let text: string;
  try {
    const bytes = await readFile(path);
    if (bytes.length > MAX_CONFIG_BYTES) throw new Error(`it is larger than ${MAX_CONFIG_BYTES} bytes`);
    text = bytes.toString("utf8");
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new OrchestratorError("DOCKER_CONFIG_INVALID", `cannot read ${path}: ${(cause as Error).message}`, {
      cause,
      details: { path },
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    throw new OrchestratorError(
      "DOCKER_CONFIG_INVALID",
      `${path} is not JSON; fix or remove it (docker login rewrites it)`,
      {
        cause,
        details: { path },
      },
    );
  }
  const parsed = dockerConfigSchema.safeParse(json);
  if (!parsed.success) {
    throw new OrchestratorError("DOCKER_CONFIG_INVALID", `${path}: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
      details: { path },
    });
  }
  return parsed.data;
}

function fromAuthEntry(entry: z.infer<typeof authEntrySchema>, where: string): RegistryAuth | undefined {
  if (entry.registrytoken) return { token: entry.registrytoken };
  if (entry.username !== undefined && entry.password !== undefined) {
    return { username: entry.username, password: entry.password };
  }
  if (entry.auth) {
    const decoded = Buffer.from(entry.auth, "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    if (colon < 1) {
      throw new OrchestratorError(
        "DOCKER_CONFIG_INVALID",
        `${where}: "auth" is not base64 of "username:password"`,
        { details: { where } },
      );
    }
    return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
  }
  return undefined;
}

/** Runs `docker-credential-<helper> get` with the server URL on stdin, as Docker does. */
async function askHelper(
  helper: string,
  server: string,
  options: DockerCredentialOptions,
): Promise<RegistryAuth | undefined> {
  const program = `docker-credential-${helper}`;
  const { stdout, code, stderr } = await new Promise<{
    stdout: string;
    stderr: string;
    code: number | string | null;
  }>((resolve) => {
    const child = execFile(
      program,
      ["get"],
      {
        env: { ...options.helperEnv },
        timeout: HELPER_TIMEOUT_MS,
        maxBuffer: MAX_HELPER_OUTPUT,
      },
      (error, out, err) =>
        resolve({
          stdout: String(out),
          stderr: String(err),
          code: error
            ? ((error as NodeJS.ErrnoException).code ?? (error as { status?: number }).status ?? 1)
            : 0,
        }),
    );
    child.stdin?.on("error", () => undefined);
    child.stdin?.end(server);
  });
  if (code === "ENOENT") {
    throw new OrchestratorError(
      "DOCKER_CONFIG_INVALID",
      `${options.configPath} names the credential helper "${helper}", but ${program} is not on PATH; install it or remove it from the config`,
      { details: { helper, server } },
    );
  }
  if (code !== 0) {
    // Helpers answer "credentials not found" with a failing exit: that is no credentials, not an error.
    if (/not found/i.test(stdout + stderr)) return undefined;
    throw new OrchestratorError(
      "DOCKER_CONFIG_INVALID",
      `${program} get failed for ${server}: ${(stderr || stdout).trim().slice(0, 300) || `exit ${code}`}`,
      { details: { helper, server } },
    );
  }
  let answer: unknown;
  try {
    answer = JSON.parse(stdout);
  } catch {
    answer = undefined;
  }
  const parsed = helperAnswerSchema.safeParse(answer);
  if (!parsed.success) {
    throw new OrchestratorError(
      "DOCKER_CONFIG_INVALID",
      `${program} get answered something other than {Username, Secret}`,
      {
        details: { helper, server },
      },
    );
  }
  if (parsed.data.Username === "<token>") {
    // An OAuth refresh token (identity token) needs a token exchange sbx does not do.
    (options.logger ?? silentLogger).warn?.(
      { helper, server },
      "the credential helper holds an identity token, which sbx cannot use; pulling anonymously",
    );
    return undefined;
  }
  return { username: parsed.data.Username, password: parsed.data.Secret };
}

/**
 * The credentials Docker would use for `registry` (as in an image reference: `docker.io`,
 * `host:5000`): a credential helper for it (`credHelpers`), else its `auths` entry, else the
 * default store (`credsStore`). Undefined when none are configured: pull anonymously.
 */
export async function dockerCredentialsFor(
  registry: string,
  options: DockerCredentialOptions,
): Promise<RegistryAuth | undefined> {
  const config = await readDockerConfig(options.configPath);
  if (!config) return undefined;
  const wanted = normalizeRegistryKey(registry);
  const server = wanted === "docker.io" ? DOCKER_HUB_SERVER : wanted;
  const helper = Object.entries(config.credHelpers ?? {}).find(
    ([key]) => normalizeRegistryKey(key) === wanted,
  )?.[1];
  if (helper) return askHelper(helper, server, options);
  const entry = Object.entries(config.auths ?? {}).find(([key]) => normalizeRegistryKey(key) === wanted);
  if (entry) {
    if (entry[1].identitytoken && !entry[1].auth) {
      (options.logger ?? silentLogger).warn?.(
        { registry },
        "config.json holds an identity token for this registry, which sbx cannot use; pulling anonymously",
      );
      return undefined;
    }
    const auth = fromAuthEntry(entry[1], `${options.configPath} auths["${entry[0]}"]`);
    if (auth) return auth;
  }
  if (config.credsStore) return askHelper(config.credsStore, server, options);
  return undefined;
}

/** Docker's credentials as this process's environment finds them (DOCKER_CONFIG, HOME, PATH). */
export function dockerCredentialsFromEnv(
  env: Readonly<Record<string, string | undefined>> = process.env,
): (registry: string) => Promise<RegistryAuth | undefined> {
  const options = dockerCredentialOptionsFromEnv(env);
  return (registry) => dockerCredentialsFor(registry, options);
}
