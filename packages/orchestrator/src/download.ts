// HTTP downloads for `sbx setup`: resumable with Range, through an optional proxy, typed errors.
import { open, readFile, rename, rm, stat } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { type Logger, silentLogger } from "@sbx/arch";
import { Agent, type Dispatcher, EnvHttpProxyAgent, fetch } from "undici";
import { z } from "zod";
import { OrchestratorError } from "./errors.ts";

export const proxySettingsSchema = z.object({
  /** Proxy for http:// URLs, e.g. `http://proxy.example:3128`. */
  httpProxy: z.url().optional(),
  /** Proxy for https:// URLs (CONNECT tunnel). */
  httpsProxy: z.url().optional(),
  /** Hosts that bypass the proxy, comma separated, as in NO_PROXY. */
  noProxy: z.string().optional(),
});
export type ProxySettings = z.infer<typeof proxySettingsSchema>;

/** HTTPS_PROXY / HTTP_PROXY / NO_PROXY (either case), as curl and Docker read them. */
export function proxySettingsFromEnv(env: Readonly<Record<string, string | undefined>>): ProxySettings {
  const pick = (name: string) => env[name.toLowerCase()] || env[name] || undefined;
  const settings = {
    httpProxy: pick("HTTP_PROXY"),
    httpsProxy: pick("HTTPS_PROXY"),
    noProxy: pick("NO_PROXY"),
  };
  const parsed = proxySettingsSchema.safeParse(settings);
  if (!parsed.success) {
    throw new OrchestratorError("CONFIG_INVALID", `proxy settings: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
    });
  }
  return parsed.data;
}

/**
 * A dispatcher of its own (closed by the caller, so no keep-alive socket outlives a setup), through
 * the given proxies when there are any. The settings are passed explicitly (empty strings, not
 * undefined) so undici never falls back to reading the environment.
 */
export function createDispatcher(settings: ProxySettings | undefined): Dispatcher {
  if (!settings?.httpProxy && !settings?.httpsProxy) return new Agent();
  return new EnvHttpProxyAgent({
    httpProxy: settings.httpProxy ?? "",
    httpsProxy: settings.httpsProxy ?? settings.httpProxy ?? "",
    noProxy: settings.noProxy ?? "",
  });
}

export interface DownloadProgress {
  url: string;
  /** The file's name, for display. */
  name: string;
  bytes: number;
  /** Undefined when the server sent no length. */
  totalBytes: number | undefined;
  /** Bytes that were already on disk from an earlier, interrupted attempt. */
  resumedFrom: number;
}

export interface HttpOptions {
  dispatcher?: Dispatcher | undefined;
  /** Retries after a network error, a cut-off body, 408, 429 or 5xx (default 4). */
  retries?: number;
  /** Base of the exponential backoff in ms (default 250). */
  retryDelayMs?: number;
  signal?: AbortSignal | undefined;
  logger?: Logger | undefined;
}

const RETRYABLE_STATUS = new Set([408, 429, 500, 502, 503, 504]);

function requestInit(options: HttpOptions, headers: Record<string, string> = {}) {
  return {
    headers,
    redirect: "follow" as const,
    ...(options.dispatcher ? { dispatcher: options.dispatcher } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  };
}

function notFound(url: string, status: number): OrchestratorError {
  return new OrchestratorError(
    "DOWNLOAD_NOT_FOUND",
    `${url} answered HTTP ${status}: the version, arch or URL does not exist there; check --firecracker-version/--arch, or the mirror's URL layout`,
    { details: { url, status } },
  );
}

function failed(url: string, why: string, attempts: number, cause?: unknown): OrchestratorError {
  // undici says only "fetch failed"; the reason (ECONNREFUSED, ENOTFOUND, ...) is on its cause.
  const inner = (cause as { cause?: { code?: string; message?: string } } | undefined)?.cause;
  const reason = inner?.code ?? inner?.message;
  return new OrchestratorError(
    "DOWNLOAD_FAILED",
    `downloading ${url} failed after ${attempts} attempt(s): ${why}${reason ? ` (${reason})` : ""}. Check the network or proxy (HTTPS_PROXY, --proxy), or download the file elsewhere and pass --from DIR`,
    { cause, details: { url, attempts } },
  );
}

async function backoff(options: HttpOptions, attempt: number, url: string, reason: string): Promise<void> {
  const delay = Math.min((options.retryDelayMs ?? 250) * 2 ** attempt, 10_000);
  (options.logger ?? silentLogger).warn?.(
    { url, attempt: attempt + 1, delayMs: delay, reason },
    "download failed; retrying",
  );
  await sleep(delay, undefined, options.signal ? { signal: options.signal } : {});
}

/** GET a small document (a checksum file, a bucket listing) into memory, at most `limit` bytes. */
export async function fetchSmall(url: string, limit: number, options: HttpOptions = {}): Promise<Buffer> {
  const retries = options.retries ?? 4;
  for (let attempt = 0; ; attempt++) {
    options.signal?.throwIfAborted();
    try {
      const response = await fetch(url, requestInit(options));
      if (response.status === 404 || response.status === 410) {
        await response.body?.cancel();
        throw notFound(url, response.status);
      }
      if (!response.ok) {
        await response.body?.cancel();
        if (RETRYABLE_STATUS.has(response.status) && attempt < retries) {
          await backoff(options, attempt, url, `HTTP ${response.status}`);
          continue;
        }
        throw failed(url, `HTTP ${response.status}`, attempt + 1);
      }
      const chunks: Buffer[] = [];
      let total = 0;
      for await (const chunk of response.body ?? []) {
        total += chunk.length;
        if (total > limit) {
          await response.body?.cancel().catch(() => undefined);
          throw failed(url, `the answer is larger than the ${limit}-byte limit for it`, attempt + 1);
        }
        chunks.push(Buffer.from(chunk));
      }
      return Buffer.concat(chunks);
    } catch (error) {
      if (error instanceof OrchestratorError || options.signal?.aborted) throw error;
      if (attempt >= retries) throw failed(url, (error as Error).message, attempt + 1, error);
      await backoff(options, attempt, url, (error as Error).message);
    }
  }
}

/** `bytes 100-199/1000` → { start: 100, total: 1000 }; `bytes *\/1000` → { start: undefined, total: 1000 }. */
function parseContentRange(header: string | null): { start: number | undefined; total: number | undefined } {
  const match = /^bytes\s+(?:(\d+)-\d+|\*)\/(\d+|\*)$/.exec(header?.trim() ?? "");
  if (!match) return { start: undefined, total: undefined };
  return {
    start: match[1] === undefined ? undefined : Number(match[1]),
    total: match[2] === "*" ? undefined : Number(match[2]),
  };
}

/**
 * Downloads `url` to `dest`. The bytes go to `dest.partial` first; a later call (or a retry after a
 * dropped connection) asks for the rest with `Range: bytes=N-` and appends, or starts over when the
 * server ignores the range. Only a complete body (its length matching Content-Length or the
 * Content-Range total) is renamed to `dest`; the caller verifies its checksum before using it.
 */
export async function downloadResumable(
  url: string,
  dest: string,
  options: HttpOptions & { name?: string; onProgress?: (progress: DownloadProgress) => void } = {},
): Promise<{ bytes: number; resumedFrom: number }> {
  const partial = `${dest}.partial`;
  const retries = options.retries ?? 4;
  const name = options.name ?? url.slice(url.lastIndexOf("/") + 1);
  let firstResume: number | undefined;
  for (let attempt = 0; ; attempt++) {
    options.signal?.throwIfAborted();
    const have = (await stat(partial).catch(() => undefined))?.size ?? 0;
    firstResume ??= have;
    let response: Awaited<ReturnType<typeof fetch>>;
    try {
      response = await fetch(url, requestInit(options, have > 0 ? { range: `bytes=${have}-` } : {}));
    } catch (error) {
      if (options.signal?.aborted) throw error;
      if (attempt >= retries) throw failed(url, (error as Error).message, attempt + 1, error);
      await backoff(options, attempt, url, (error as Error).message);
      continue;
    }
    if (response.status === 404 || response.status === 410) {
      await response.body?.cancel();
      throw notFound(url, response.status);
    }
    if (response.status === 416) {
      // The partial file is as long as the resource (or longer, if it changed): finish or restart.
      await response.body?.cancel();
      const { total } = parseContentRange(response.headers.get("content-range"));
      if (total !== undefined && total === have) {
        await rename(partial, dest);
        return { bytes: have, resumedFrom: firstResume };
      }
      await rm(partial, { force: true });
      if (attempt >= retries) throw failed(url, "HTTP 416 for a resumed range", attempt + 1);
      continue;
    }
    if (!response.ok) {
      await response.body?.cancel();
      if (RETRYABLE_STATUS.has(response.status) && attempt < retries) {
        await backoff(options, attempt, url, `HTTP ${response.status}`);
        continue;
      }
      throw failed(url, `HTTP ${response.status}`, attempt + 1);
    }
    let offset = 0;
    let total: number | undefined;
    if (response.status === 206) {
      const range = parseContentRange(response.headers.get("content-range"));
      if (range.start !== have) {
        // A range we did not ask for: distrust it and start over.
        await response.body?.cancel();
        await rm(partial, { force: true });
        if (attempt >= retries) throw failed(url, "the server answered a different range", attempt + 1);
        continue;
      }
      offset = have;
      total = range.total;
    } else {
      const length = Number(response.headers.get("content-length"));
      total = response.headers.has("content-length") && Number.isFinite(length) ? length : undefined;
    }
    const handle = await open(partial, offset > 0 ? "a" : "w", 0o600);
    let written = offset;
    try {
      const report = () =>
        options.onProgress?.({ url, name, bytes: written, totalBytes: total, resumedFrom: firstResume ?? 0 });
      report();
      for await (const chunk of response.body ?? []) {
        await handle.write(chunk);
        written += chunk.length;
        report();
      }
      await handle.sync();
    } catch (error) {
      await handle.close();
      if (options.signal?.aborted) throw error;
      if (attempt >= retries)
        throw failed(url, `the body was cut off: ${(error as Error).message}`, attempt + 1, error);
      await backoff(options, attempt, url, `body cut off after ${written} bytes`);
      continue;
    }
    await handle.close();
    if (total !== undefined && written !== total) {
      if (attempt >= retries) throw failed(url, `got ${written} of ${total} bytes`, attempt + 1);
      await backoff(options, attempt, url, `got ${written} of ${total} bytes`);
      continue;
    }
    await rename(partial, dest);
    return { bytes: written, resumedFrom: firstResume };
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Runs `body` while holding `{dest}.lock` (created exclusively, holding this pid), so two setups never
 * append to the same partial download. A lock whose process is gone is taken over.
 */
export async function withDownloadLock<T>(dest: string, body: () => Promise<T>): Promise<T> {
  const lock = `${dest}.lock`;
  for (let attempt = 0; ; attempt++) {
    try {
      const handle = await open(lock, "wx", 0o600);
      await handle.writeFile(`${process.pid}\n`);
      await handle.close();
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 0) throw error;
      const owner = Number((await readFile(lock, "utf8").catch(() => "")).trim());
      if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && processAlive(owner)) {
        throw new OrchestratorError(
          "NOT_AVAILABLE",
          `another process (pid ${owner}) is downloading ${dest}; wait for it to finish, then run setup again`,
          { details: { dest, owner } },
        );
      }
      await rm(lock, { force: true });
    }
  }
  try {
    return await body();
  } finally {
    await rm(lock, { force: true });
  }
}
