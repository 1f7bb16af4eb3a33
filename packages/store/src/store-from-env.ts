import { z } from "zod";
import { type BuildStore, checkKey } from "./build-store.ts";
import { StoreError } from "./errors.ts";
import { FilesystemStore } from "./filesystem-store.ts";
import { S3Store, type S3StoreOptions } from "./s3-store.ts";

const envSchema = z.object({
  SBX_STORE_URL: z.string().min(1).optional(),
  AWS_ENDPOINT_URL: z.string().min(1).optional(),
  AWS_ENDPOINT_URL_S3: z.string().min(1).optional(),
  AWS_REGION: z.string().min(1).optional(),
  AWS_DEFAULT_REGION: z.string().min(1).optional(),
  AWS_ACCESS_KEY_ID: z.string().min(1).optional(),
  AWS_SECRET_ACCESS_KEY: z.string().min(1).optional(),
  AWS_SESSION_TOKEN: z.string().min(1).optional(),
});

/** Where SBX_STORE_URL points, parsed. */
export type StoreLocation =
  | { kind: "file"; directory: string }
  | { kind: "s3"; bucket: string; prefix: string };

// S3 bucket naming rules (3-63 chars, lowercase, digits, dots, hyphens).
const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

function badUrl(url: string, why: string): StoreError {
  return new StoreError(
    "CONFIG_INVALID",
    `SBX_STORE_URL=${JSON.stringify(url)} ${why}; use s3://bucket/prefix or file:///absolute/dir`,
    { variable: "SBX_STORE_URL" },
  );
}

/** Reads `s3://bucket/prefix` or `file:///dir` (SBX_STORE_URL); CONFIG_INVALID otherwise. */
export function parseStoreUrl(url: string): StoreLocation {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (cause) {
    throw Object.assign(badUrl(url, "is not a URL"), { cause });
  }
  if (parsed.protocol === "file:") {
    if (parsed.host !== "") throw badUrl(url, "names a host; file URLs take three slashes");
    const directory = decodeURIComponent(parsed.pathname).replace(/\/+$/, "");
    if (directory === "") throw badUrl(url, "names the root directory");
    return { kind: "file", directory };
  }
  if (parsed.protocol === "s3:") {
    if (!BUCKET.test(parsed.host))
      throw badUrl(url, `names bucket ${JSON.stringify(parsed.host)}, not a valid bucket`);
    const prefix = decodeURIComponent(parsed.pathname).replace(/^\/+|\/+$/g, "");
    if (prefix !== "") {
      try {
        checkKey(prefix);
      } catch {
        throw badUrl(url, "has a prefix that is not a/b/c of [A-Za-z0-9._-] segments");
      }
    }
    return { kind: "s3", bucket: parsed.host, prefix };
  }
  throw badUrl(url, `has scheme ${parsed.protocol}`);
}

/** What storeFromEnv may be given beyond the environment. */
export interface StoreFromEnvOptions {
  /** Passed to the S3 backend (timeouts, attempts). */
  s3?: Pick<S3StoreOptions, "requestTimeoutMs" | "connectTimeoutMs" | "maxAttempts">;
}

/**
 * The store SBX_STORE_URL names, or undefined when it is unset (builds stay on this host). For s3://,
 * the endpoint, region and credentials come from the standard AWS variables; with neither key set the
 * SDK's default chain (instance role, profile) is used.
 */
export function storeFromEnv(
  env: Record<string, string | undefined> = process.env,
  options: StoreFromEnvOptions = {},
): BuildStore | undefined {
  const parsedEnv = envSchema.safeParse(env);
  if (!parsedEnv.success) {
    const variable = String(parsedEnv.error.issues[0]?.path[0] ?? "SBX_STORE_URL");
    throw new StoreError("CONFIG_INVALID", `${variable} is set but empty`, { variable });
  }
  const vars = parsedEnv.data;
  if (!vars.SBX_STORE_URL) return undefined;
  const location = parseStoreUrl(vars.SBX_STORE_URL);
  if (location.kind === "file") return new FilesystemStore({ directory: location.directory });
  if (Boolean(vars.AWS_ACCESS_KEY_ID) !== Boolean(vars.AWS_SECRET_ACCESS_KEY)) {
    const missing = vars.AWS_ACCESS_KEY_ID ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID";
    throw new StoreError("CONFIG_INVALID", `${missing} is not set, but its pair is; set both or neither`, {
      variable: missing,
    });
  }
  const endpoint = vars.AWS_ENDPOINT_URL_S3 ?? vars.AWS_ENDPOINT_URL;
  if (endpoint !== undefined) {
    const variable = vars.AWS_ENDPOINT_URL_S3 ? "AWS_ENDPOINT_URL_S3" : "AWS_ENDPOINT_URL";
    let protocol = "";
    try {
      protocol = new URL(endpoint).protocol;
    } catch {}
    if (protocol !== "http:" && protocol !== "https:")
      throw new StoreError(
        "CONFIG_INVALID",
        `${variable}=${JSON.stringify(endpoint)} is not an http(s) URL`,
        {
          variable,
        },
      );
  }
  return new S3Store({
    bucket: location.bucket,
    prefix: location.prefix,
    ...(endpoint ? { endpoint } : {}),
    region: vars.AWS_REGION ?? vars.AWS_DEFAULT_REGION ?? "us-east-1",
    ...(vars.AWS_ACCESS_KEY_ID && vars.AWS_SECRET_ACCESS_KEY
      ? {
          credentials: {
            accessKeyId: vars.AWS_ACCESS_KEY_ID,
            secretAccessKey: vars.AWS_SECRET_ACCESS_KEY,
            ...(vars.AWS_SESSION_TOKEN ? { sessionToken: vars.AWS_SESSION_TOKEN } : {}),
          },
        }
      : {}),
    ...options.s3,
  });
}
