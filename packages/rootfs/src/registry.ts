import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, readFile, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { type Logger, silentLogger, writeFileAtomic } from "@sbx/arch";
import { z } from "zod";
import { RootfsError } from "./errors.ts";
import { blobPath, verifyBytes } from "./oci-layout.ts";
import {
  type Descriptor,
  type ImageConfig,
  type ImageIndex,
  INDEX_MEDIA_TYPES,
  imageIndexSchema,
  MANIFEST_MEDIA_TYPES,
  MEDIA_TYPES,
  REF_NAME_ANNOTATION,
} from "./oci-schemas.ts";
import {
  type ManifestSource,
  type PlatformSpec,
  type PlatformTriple,
  schemaFor,
  selectImage,
} from "./platform.ts";
import { type ImageReference, isLoopbackRegistry, parseImageReference } from "./reference.ts";
import { verifyingStream } from "./unpack.ts";

/** Credentials for a registry: a user and password, or a bearer token. */
export type RegistryAuth = { username: string; password: string } | { token: string };

/** One blob of a pull: skipped (already in the layout), downloading, or done. */
export interface PullProgress {
  digest: string;
  kind: "manifest" | "config" | "layer";
  status: "skipped" | "downloading" | "done";
  bytes: number;
  totalBytes: number;
}

/** What `pullImage` fetches (a reference, for a platform) and where it writes it (an OCI layout). */
export interface PullImageOptions {
  /** Docker-style: `alpine`, `docker.io/library/alpine:3.20`, `registry.example:5000/team/app@sha256:…`. */
  reference: string;
  platform: PlatformSpec;
  /** An OCI layout directory; created, or added to (blobs already there are verified and skipped). */
  dest: string;
  auth?: RegistryAuth;
  /** Plain HTTP instead of HTTPS (default: only for localhost/127.0.0.0/8/[::1], as Docker does). */
  plainHttp?: boolean;
  /** Retries of a request after a network error, 408, 429 or 5xx (default 4, exponential backoff). */
  retries?: number;
  /** Base delay of the backoff in ms (default 250). */
  retryDelayMs?: number;
  /** Parallel layer downloads (default 3). */
  concurrency?: number;
  onProgress?: (progress: PullProgress) => void;
  signal?: AbortSignal;
  logger?: Logger;
}

/** What `pullImage` wrote: the layout, the resolved reference and the platform manifest's digest. */
export interface PullImageResult {
  layoutPath: string;
  reference: ImageReference;
  /** The platform manifest written to the layout (what index.json now names). */
  manifestDigest: string;
  /** What the reference resolved to: an index/manifest list, or the manifest itself. */
  resolvedDigest: string;
  platform: PlatformTriple;
  config: ImageConfig;
  downloaded: string[];
  skipped: string[];
}

const MANIFEST_ACCEPT = [
  MEDIA_TYPES.ociIndex,
  MEDIA_TYPES.ociManifest,
  MEDIA_TYPES.dockerManifestList,
  MEDIA_TYPES.dockerManifest,
].join(", ");
const MAX_MANIFEST_BYTES = 8 * 1024 * 1024;
const RETRYABLE_STATUS = new Set([408, 429, 500, 502, 503, 504]);

const tokenResponseSchema = z.looseObject({
  token: z.string().optional(),
  access_token: z.string().optional(),
});

interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parse `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` (one challenge). */
export function parseAuthenticateHeader(header: string): Challenge | undefined {
  const text = header.trimStart();
  // The scheme is the whole match, so there is no capture group that could be missing.
  const scheme = /^\w+/.exec(text)?.[0];
  if (scheme === undefined) return undefined;
  const params: Record<string, string> = {};
  const pattern = /([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))/g;
  for (const [, name, quoted, token] of text.slice(scheme.length).matchAll(pattern)) {
    const value = quoted !== undefined ? quoted.replace(/\\(.)/g, "$1") : token;
    // A match always has the name and one of the two values; this only narrows their types.
    if (name === undefined || value === undefined) continue;
    params[name.toLowerCase()] = value;
  }
  return { scheme: scheme.toLowerCase(), params };
}

/** A minimal OCI distribution client for one repository: auth challenges, retries, streaming. */
class RegistryClient {
  readonly #reference: ImageReference;
  readonly #base: string;
  readonly #auth: RegistryAuth | undefined;
  readonly #retries: number;
  readonly #retryDelayMs: number;
  readonly #signal: AbortSignal | undefined;
  readonly #logger: Logger;
  #authorization: string | undefined;

  constructor(reference: ImageReference, options: PullImageOptions) {
    this.#reference = reference;
    const plain = options.plainHttp ?? isLoopbackRegistry(reference.registry);
    this.#base = `${plain ? "http" : "https"}://${reference.apiHost}/v2/${reference.repository}`;
    this.#auth = options.auth;
    this.#retries = options.retries ?? 4;
    this.#retryDelayMs = options.retryDelayMs ?? 250;
    this.#signal = options.signal;
    this.#logger = options.logger ?? silentLogger;
    if (options.auth && "token" in options.auth) this.#authorization = `Bearer ${options.auth.token}`;
  }

  /** GET with auth and retries; the caller consumes or cancels the body. */
  async get(path: string, accept?: string, headers: Record<string, string> = {}): Promise<Response> {
    const url = `${this.#base}${path}`;
    let authenticated = false;
    for (let attempt = 0; ; attempt++) {
      this.#signal?.throwIfAborted();
      let response: Response;
      try {
        response = await fetch(url, {
          headers: {
            ...headers,
            ...(accept ? { accept } : {}),
            ...(this.#authorization ? { authorization: this.#authorization } : {}),
          },
          redirect: "follow",
          ...(this.#signal ? { signal: this.#signal } : {}),
        });
      } catch (error) {
        if (this.#signal?.aborted || attempt >= this.#retries) {
          throw new RootfsError(
            "REGISTRY_REQUEST_FAILED",
            `GET ${url} failed after ${attempt + 1} attempt(s): ${(error as Error).message}${describeCause(error)}. Check that the registry is reachable (and whether it speaks HTTPS: see plainHttp)`,
            { cause: error, details: { url, attempts: attempt + 1 } },
          );
        }
        await this.#backoff(attempt, url, (error as Error).message);
        continue;
      }
      if (response.status === 401 && !authenticated) {
        authenticated = true;
        await response.body?.cancel();
        await this.#authenticate(response.headers.get("www-authenticate"), url);
        attempt--;
        continue;
      }
      if (RETRYABLE_STATUS.has(response.status) && attempt < this.#retries) {
        await response.body?.cancel();
        const retryAfter = Number(response.headers.get("retry-after"));
        await this.#backoff(
          attempt,
          url,
          `HTTP ${response.status}`,
          Number.isFinite(retryAfter) ? retryAfter * 1000 : 0,
        );
        continue;
      }
      if (response.ok) return response;
      const body = (await response.text().catch(() => "")).slice(0, 500);
      if (response.status === 401 || response.status === 403) {
        throw new RootfsError(
          "REGISTRY_AUTH_FAILED",
          `${this.#reference.registry} refused access to ${this.#reference.repository} (HTTP ${response.status}): ${body || "no details"}. ${this.#auth ? "Check the credentials" : "Pass auth: { username, password } (or a token)"}`,
          { details: { url, status: response.status } },
        );
      }
      if (response.status === 404) {
        throw new RootfsError(
          "REGISTRY_NOT_FOUND",
          `${url} was not found (HTTP 404) on ${this.#reference.registry}: ${body || "no details"}. Check the repository, tag or digest in ${JSON.stringify(this.#reference.canonical)}`,
          { details: { url, status: 404 } },
        );
      }
      throw new RootfsError(
        "REGISTRY_REQUEST_FAILED",
        `GET ${url} answered HTTP ${response.status}${attempt > 0 ? ` after ${attempt + 1} attempts` : ""}: ${body || "no details"}`,
        { details: { url, status: response.status, attempts: attempt + 1 } },
      );
    }
  }

  /** GET a small document; a body cut off mid-way is retried like a failed request. */
  async getBytes(
    path: string,
    limit: number,
    what: string,
    accept?: string,
  ): Promise<{ bytes: Buffer; response: Response }> {
    for (let attempt = 0; ; attempt++) {
      const response = await this.get(path, accept);
      try {
        return { bytes: await readLimited(response, limit, what), response };
      } catch (error) {
        if (error instanceof RootfsError || this.#signal?.aborted || attempt >= this.#retries) throw error;
        await this.#backoff(attempt, `${this.#base}${path}`, (error as Error).message);
      }
    }
  }

  async #backoff(attempt: number, url: string, reason: string, minimumMs = 0): Promise<void> {
    const delay = Math.min(Math.max(this.#retryDelayMs * 2 ** attempt, minimumMs), 10_000);
    this.#logger.warn?.(
      { url, attempt: attempt + 1, delayMs: delay, reason },
      "registry request failed; retrying",
    );
    await sleep(delay, undefined, this.#signal ? { signal: this.#signal } : {});
  }

  async #authenticate(header: string | null, url: string): Promise<void> {
    const challenge = header ? parseAuthenticateHeader(header) : undefined;
    const needLogin = (why: string) =>
      new RootfsError(
        "REGISTRY_AUTH_FAILED",
        `${this.#reference.registry} requires authentication for ${this.#reference.repository} (${why}); pass auth: { username, password }`,
        { details: { url, challenge: header } },
      );
    if (challenge?.scheme === "basic") {
      if (!this.#auth || !("username" in this.#auth)) throw needLogin("HTTP basic");
      this.#authorization = `Basic ${Buffer.from(`${this.#auth.username}:${this.#auth.password}`).toString("base64")}`;
      return;
    }
    if (challenge?.scheme !== "bearer" || !challenge.params.realm) {
      if (!this.#auth) throw needLogin(`challenge ${JSON.stringify(header)}`);
      throw new RootfsError(
        "REGISTRY_AUTH_FAILED",
        `${url}: unsupported authentication challenge ${JSON.stringify(header)}`,
        {
          details: { url, challenge: header },
        },
      );
    }
    const tokenUrl = new URL(challenge.params.realm);
    if (challenge.params.service) tokenUrl.searchParams.set("service", challenge.params.service);
    tokenUrl.searchParams.set(
      "scope",
      challenge.params.scope ?? `repository:${this.#reference.repository}:pull`,
    );
    const headers: Record<string, string> = {};
    if (this.#auth && "username" in this.#auth) {
      headers.authorization = `Basic ${Buffer.from(`${this.#auth.username}:${this.#auth.password}`).toString("base64")}`;
    }
    let response: Response | undefined;
    for (let attempt = 0; ; attempt++) {
      try {
        response = await fetch(tokenUrl, { headers, ...(this.#signal ? { signal: this.#signal } : {}) });
        if (!RETRYABLE_STATUS.has(response.status) || attempt >= this.#retries) break;
        await response.body?.cancel();
      } catch (error) {
        if (this.#signal?.aborted || attempt >= this.#retries) {
          throw new RootfsError(
            "REGISTRY_AUTH_FAILED",
            `token request to ${tokenUrl.origin} failed: ${(error as Error).message}`,
            {
              cause: error,
              details: { realm: challenge.params.realm },
            },
          );
        }
      }
      await this.#backoff(attempt, tokenUrl.href, "token request failed");
    }
    if (!response.ok) {
      const body = (await response.text().catch(() => "")).slice(0, 300);
      throw new RootfsError(
        "REGISTRY_AUTH_FAILED",
        `the token service ${tokenUrl.origin}${tokenUrl.pathname} refused ${this.#auth ? "the credentials" : "anonymous access"} (HTTP ${response.status}): ${body || "no details"}`,
        { details: { realm: challenge.params.realm, status: response.status } },
      );
    }
    const parsed = tokenResponseSchema.safeParse(await response.json().catch(() => undefined));
    const token = parsed.success ? (parsed.data.token ?? parsed.data.access_token) : undefined;
    if (!token) {
      throw new RootfsError(
        "REGISTRY_AUTH_FAILED",
        `the token service ${tokenUrl.origin} answered without a token`,
        {
          details: { realm: challenge.params.realm },
        },
      );
    }
    this.#authorization = `Bearer ${token}`;
  }
}

function describeCause(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ? ` (${cause.code})` : cause?.message ? ` (${cause.message})` : "";
}

async function readLimited(response: Response, limit: number, what: string): Promise<Buffer> {
  const declared = Number(response.headers.get("content-length"));
  if (Number.isFinite(declared) && declared > limit) {
    await response.body?.cancel();
    throw new RootfsError(
      "REGISTRY_REQUEST_FAILED",
      `${what} is ${declared} bytes, more than the ${limit}-byte limit`,
      {
        details: { what, size: declared },
      },
    );
  }
  const chunks: Buffer[] = [];
  let total = 0;
  if (response.body) {
    for await (const chunk of response.body) {
      total += chunk.length;
      if (total > limit) {
        throw new RootfsError("REGISTRY_REQUEST_FAILED", `${what} is larger than the ${limit}-byte limit`, {
          details: { what },
        });
      }
      chunks.push(Buffer.from(chunk));
    }
  }
  return Buffer.concat(chunks);
}

function sha256(bytes: Buffer): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/**
 * Pull an image for one platform from an OCI distribution registry into an OCI image layout at
 * `dest`, tagged with the reference's tag. Indexes and Docker manifest lists are resolved to the
 * platform's manifest; every blob is streamed to a temp file, verified against its digest and size,
 * and renamed into `blobs/`; blobs already present and intact are skipped; `index.json` is replaced
 * atomically. Unpack the result with readOciLayout + unpackImage.
 */
export async function pullImage(options: PullImageOptions): Promise<PullImageResult> {
  const reference = parseImageReference(options.reference);
  // One failed layer stops the others: nothing keeps writing into dest after pullImage settles.
  const stopWorkers = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stopWorkers.signal]) : stopWorkers.signal;
  const client = new RegistryClient(reference, { ...options, signal });
  const progress = options.onProgress ?? (() => undefined);
  const dest = options.dest;
  await mkdir(join(dest, "blobs", "sha256"), { recursive: true });

  const fetchManifest = async (ref: string, expected?: Descriptor) => {
    const { bytes, response } = await client.getBytes(
      `/manifests/${ref}`,
      MAX_MANIFEST_BYTES,
      `manifest ${ref}`,
      MANIFEST_ACCEPT,
    );
    const digest = sha256(bytes);
    if (expected) verifyBytes(bytes, expected, `${reference.registry}/${reference.repository}`);
    else if (ref.startsWith("sha256:") && digest !== ref) {
      throw new RootfsError(
        "OCI_DIGEST_MISMATCH",
        `manifest ${ref} from ${reference.registry} hashes to ${digest}; the registry served altered content`,
        {
          details: { expected: ref, actual: digest },
        },
      );
    }
    const headerDigest = response.headers.get("docker-content-digest");
    if (
      !expected &&
      !ref.startsWith("sha") &&
      headerDigest?.startsWith("sha256:") &&
      headerDigest !== digest
    ) {
      throw new RootfsError(
        "OCI_DIGEST_MISMATCH",
        `manifest ${ref}: the registry says ${headerDigest} but the content hashes to ${digest}`,
        {
          details: { expected: headerDigest, actual: digest },
        },
      );
    }
    let json: { mediaType?: unknown } | undefined;
    try {
      json = JSON.parse(bytes.toString("utf8")) as { mediaType?: unknown };
    } catch (error) {
      throw new RootfsError("OCI_LAYOUT_INVALID", `manifest ${ref} from ${reference.registry} is not JSON`, {
        cause: error,
      });
    }
    const contentType = response.headers.get("content-type")?.split(";")[0]?.trim();
    const mediaType =
      typeof json?.mediaType === "string" ? json.mediaType : (contentType ?? MEDIA_TYPES.ociManifest);
    return { bytes, digest, mediaType, json };
  };

  const topReference = reference.digest ?? reference.tag;
  if (topReference === undefined) {
    throw new RootfsError(
      "REFERENCE_INVALID",
      `${reference.canonical} names neither a tag nor a digest; give one, e.g. ${reference.canonical}:latest`,
      { details: { reference: reference.canonical } },
    );
  }
  const top = await fetchManifest(topReference);
  const topDescriptor: Descriptor = { mediaType: top.mediaType, digest: top.digest, size: top.bytes.length };
  if (!INDEX_MEDIA_TYPES.includes(top.mediaType) && !MANIFEST_MEDIA_TYPES.includes(top.mediaType)) {
    throw new RootfsError(
      "OCI_UNSUPPORTED_MEDIA_TYPE",
      `${reference.canonical} is a ${top.mediaType}, not an image manifest or index (schema-1 manifests are not supported)`,
      { details: { mediaType: top.mediaType } },
    );
  }
  const fetched = new Map<string, Buffer>([[top.digest, top.bytes]]);
  const parse = <T>(bytes: Buffer, kind: "index" | "manifest" | "config", where: string): T => {
    const result = schemaFor(kind).safeParse(JSON.parse(bytes.toString("utf8")));
    if (!result.success) {
      throw new RootfsError(
        "OCI_LAYOUT_INVALID",
        `${where} does not match the OCI ${kind} schema: ${result.error.message}`,
        {
          cause: result.error,
        },
      );
    }
    return result.data as T;
  };
  const smallBlob = async (
    descriptor: Descriptor,
    kind: "index" | "manifest" | "config",
  ): Promise<Buffer> => {
    const cached = fetched.get(descriptor.digest);
    if (cached) return cached;
    let bytes: Buffer;
    if (kind === "config") {
      bytes = (
        await client.getBytes(
          `/blobs/${descriptor.digest}`,
          MAX_MANIFEST_BYTES,
          `config ${descriptor.digest}`,
        )
      ).bytes;
      verifyBytes(bytes, descriptor, reference.canonical);
    } else {
      bytes = (await fetchManifest(descriptor.digest, descriptor)).bytes;
    }
    fetched.set(descriptor.digest, bytes);
    return bytes;
  };
  const source: ManifestSource = {
    async readJson(descriptor, kind) {
      const bytes = await smallBlob(descriptor, kind);
      return parse(bytes, kind, `${reference.canonical} ${descriptor.digest}`) as never;
    },
  };
  const index: ImageIndex = INDEX_MEDIA_TYPES.includes(top.mediaType)
    ? parse<ImageIndex>(top.bytes, "index", reference.canonical)
    : imageIndexSchema.parse({ schemaVersion: 2, manifests: [topDescriptor] });
  const selected = await selectImage(source, index, options.platform, { where: reference.canonical });

  const downloaded: string[] = [];
  const skipped: string[] = [];
  const storeSmall = async (descriptor: Descriptor, kind: "manifest" | "config") => {
    // selectImage read (and schema-checked) the chosen manifest and its config, so this is from memory.
    const bytes = await smallBlob(descriptor, kind);
    const path = join(dest, blobPath(descriptor.digest));
    if (await blobIntact(path, descriptor)) {
      skipped.push(descriptor.digest);
      progress({
        digest: descriptor.digest,
        kind,
        status: "skipped",
        bytes: descriptor.size,
        totalBytes: descriptor.size,
      });
      return;
    }
    await writeFileAtomic(path, bytes, { mode: 0o644 });
    downloaded.push(descriptor.digest);
    progress({
      digest: descriptor.digest,
      kind,
      status: "done",
      bytes: descriptor.size,
      totalBytes: descriptor.size,
    });
  };
  await storeSmall(selected.configDescriptor, "config");

  const layers = [...selected.manifest.layers];
  const workers = Array.from(
    { length: Math.max(1, Math.min(options.concurrency ?? 3, layers.length)) },
    async () => {
      for (let layer = layers.shift(); layer && !signal.aborted; layer = layers.shift()) {
        const path = join(dest, blobPath(layer.digest));
        if (await blobIntact(path, layer)) {
          skipped.push(layer.digest);
          progress({
            digest: layer.digest,
            kind: "layer",
            status: "skipped",
            bytes: layer.size,
            totalBytes: layer.size,
          });
          continue;
        }
        progress({
          digest: layer.digest,
          kind: "layer",
          status: "downloading",
          bytes: 0,
          totalBytes: layer.size,
        });
        await downloadBlob(client, layer, path, reference, { ...options, signal }, (bytes) =>
          progress({
            digest: layer.digest,
            kind: "layer",
            status: "downloading",
            bytes,
            totalBytes: layer.size,
          }),
        );
        downloaded.push(layer.digest);
        progress({
          digest: layer.digest,
          kind: "layer",
          status: "done",
          bytes: layer.size,
          totalBytes: layer.size,
        });
      }
    },
  );
  let firstFailure: { error: unknown } | undefined;
  await Promise.all(
    workers.map((worker) =>
      worker.catch((error: unknown) => {
        firstFailure ??= { error };
        stopWorkers.abort();
      }),
    ),
  );
  if (firstFailure) throw firstFailure.error;
  await storeSmall(selected.manifestDescriptor, "manifest");

  await writeLayoutIndex(dest, {
    mediaType: selected.manifestDescriptor.mediaType,
    digest: selected.manifestDescriptor.digest,
    size: selected.manifestDescriptor.size,
    platform: {
      os: selected.platform.os,
      architecture: selected.platform.architecture,
      ...(selected.platform.variant ? { variant: selected.platform.variant } : {}),
    },
    ...(reference.tag ? { annotations: { [REF_NAME_ANNOTATION]: reference.tag } } : {}),
  });
  options.logger?.info?.(
    { reference: reference.canonical, downloaded: downloaded.length, skipped: skipped.length },
    "image pulled",
  );
  return {
    layoutPath: dest,
    reference,
    manifestDigest: selected.manifestDescriptor.digest,
    resolvedDigest: top.digest,
    platform: selected.platform,
    config: selected.config,
    downloaded,
    skipped,
  };
}

/** A present blob counts only when its size and digest are right; a damaged one is removed. */
async function blobIntact(path: string, descriptor: Descriptor): Promise<boolean> {
  const info = await stat(path).catch(() => undefined);
  if (!info) return false;
  if (info.isFile() && info.size === descriptor.size) {
    try {
      await pipeline(
        createReadStream(path),
        verifyingStream(descriptor, `blob ${descriptor.digest}`),
        async (source) => {
          for await (const _ of source) {
            // drain
          }
        },
      );
      return true;
    } catch {
      // fall through: damaged
    }
  }
  await rm(path, { force: true });
  return false;
}

/** The first `count` bytes are dropped: they are already in the partial file, and only hashed again. */
function dropFirst(count: number): Transform {
  let left = count;
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      if (left >= chunk.length) {
        left -= chunk.length;
        callback();
        return;
      }
      const rest = left > 0 ? chunk.subarray(left) : chunk;
      left = 0;
      callback(null, rest);
    },
  });
}

/** Reports the running byte count per chunk (verifyingStream reports only every few MiB). */
function countBytes(onBytes: (bytes: number) => void): Transform {
  let total = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      total += chunk.length;
      onBytes(total);
      callback(null, chunk);
    },
  });
}

/** `bytes 100-199/1000` → 100. */
function contentRangeStart(header: string | null): number | undefined {
  const match = /^bytes\s+(\d+)-\d+\/(?:\d+|\*)$/.exec(header?.trim() ?? "");
  return match ? Number(match[1]) : undefined;
}

/**
 * Streams a blob into `{path}.partial` and renames it to `path` once its digest and size check out.
 * A download cut off (here, or in an earlier pull that was interrupted) resumes: the bytes already
 * in the partial file are hashed again from disk and the rest is asked for with `Range: bytes=N-`;
 * a registry that answers 200 instead of 206 sends the whole blob, which then replaces the partial
 * file. A digest or size mismatch deletes the partial file, so the next attempt starts clean.
 * Two pulls of the same blob into the same layout at once share the partial file; the digest check
 * still keeps a mixed result out of `blobs/`.
 */
async function downloadBlob(
  client: RegistryClient,
  descriptor: Descriptor,
  path: string,
  reference: ImageReference,
  options: PullImageOptions,
  onBytes: (bytes: number) => void,
): Promise<void> {
  const retries = options.retries ?? 4;
  const partial = `${path}.partial`;
  const what = `blob ${descriptor.digest} from ${reference.canonical}`;
  for (let attempt = 0; ; attempt++) {
    try {
      let have = (await stat(partial).catch(() => undefined))?.size ?? 0;
      if (have > 0 && have >= descriptor.size) {
        // All there (the pull stopped before the rename), or too long: check it, else start over.
        if (have === descriptor.size && (await blobIntact(partial, descriptor))) {
          await rename(partial, path);
          return;
        }
        await rm(partial, { force: true });
        have = 0;
      }
      const response = await client.get(
        `/blobs/${descriptor.digest}`,
        undefined,
        have > 0 ? { range: `bytes=${have}-` } : {},
      );
      if (!response.body) throw new Error("the registry sent no body");
      const resumed =
        response.status === 206 && contentRangeStart(response.headers.get("content-range")) === have;
      if (response.status === 206 && !resumed) {
        await response.body.cancel();
        await rm(partial, { force: true });
        throw new Error(`the registry answered a range other than bytes=${have}-`);
      }
      const offset = resumed ? have : 0;
      if (offset > 0) {
        options.logger?.info?.({ digest: descriptor.digest, offset }, "resuming blob download");
      }
      // The body gets the signal itself: the generator below cannot be stopped while it awaits a stalled body.
      const body = Readable.fromWeb(
        response.body as import("node:stream/web").ReadableStream<Uint8Array>,
        options.signal ? { signal: options.signal } : {},
      );
      async function* content() {
        if (offset > 0) yield* createReadStream(partial, { end: offset - 1 });
        yield* body;
      }
      try {
        await pipeline(
          Readable.from(content()),
          verifyingStream(descriptor, what),
          countBytes(onBytes),
          dropFirst(offset),
          createWriteStream(partial, { flags: offset > 0 ? "a" : "w", flush: true }),
          options.signal ? { signal: options.signal } : {},
        );
      } finally {
        body.destroy();
      }
      await rename(partial, path);
      return;
    } catch (error) {
      if (error instanceof RootfsError) {
        // Altered content: what is on disk cannot be resumed from.
        if (error.code === "OCI_DIGEST_MISMATCH") await rm(partial, { force: true });
        throw error;
      }
      const retryable = !options.signal?.aborted && attempt < retries;
      if (!retryable) throw error;
      options.logger?.warn?.(
        { digest: descriptor.digest, attempt: attempt + 1, error: (error as Error).message },
        "blob download interrupted; resuming",
      );
      await sleep(Math.min((options.retryDelayMs ?? 250) * 2 ** attempt, 10_000));
    }
  }
}

/** Add (or replace, by tag) one manifest in the layout's index.json; the file is replaced atomically. */
async function writeLayoutIndex(dest: string, descriptor: Descriptor): Promise<void> {
  let index: ImageIndex = { schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests: [] };
  const existing = await readFile(join(dest, "index.json"), "utf8").catch(() => undefined);
  if (existing !== undefined) {
    const parsed = imageIndexSchema.safeParse(JSON.parse(existing));
    if (!parsed.success) {
      throw new RootfsError(
        "OCI_LAYOUT_INVALID",
        `${dest}/index.json exists but is not an OCI index; choose an empty dest`,
        {
          details: { dest },
        },
      );
    }
    index = parsed.data;
  }
  const tag = descriptor.annotations?.[REF_NAME_ANNOTATION];
  const manifests = index.manifests.filter((d) =>
    tag === undefined ? d.digest !== descriptor.digest : d.annotations?.[REF_NAME_ANNOTATION] !== tag,
  );
  manifests.push(descriptor);
  await writeFileAtomic(join(dest, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }), {
    mode: 0o644,
  });
  await writeFileAtomic(join(dest, "index.json"), JSON.stringify({ ...index, manifests }), { mode: 0o644 });
}
