// The S3-compatible backend, through @aws-sdk/client-s3 (AWS's own maintained client: SigV4, retries
// with backoff, range GETs and path-style addressing, which MinIO, Ceph RGW, R2 and s3rver need).
// Every request is bounded: a connect timeout, a socket idle timeout, and an overall deadline that
// aborts the request including its body, so a store that dies mid-transfer surfaces as
// STORE_UNREACHABLE in bounded time instead of a hung read.
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from "@aws-sdk/client-s3";
import {
  type BuildStore,
  checkKey,
  checkPrefix,
  checkRange,
  DEFAULT_MAX_GET_BYTES,
  type GetOptions,
  type PutBody,
  type RequestOptions,
  type StoredObject,
} from "./build-store.ts";
import { StoreError } from "./errors.ts";

/** Where an S3Store points (bucket, prefix, endpoint, region) and how it signs. */
export interface S3StoreOptions {
  bucket: string;
  /** Key prefix inside the bucket, without leading or trailing "/" ("" for the bucket's root). */
  prefix?: string;
  /** e.g. http://127.0.0.1:9000; AWS's regional endpoint when absent. */
  endpoint?: string;
  region: string;
  /** Absent: the SDK's default chain (instance role, profile, ...). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Names the settings came from, so a rejected credential names what to fix. */
  credentialSources?: { accessKeyId: string; secretAccessKey: string };
  /** Path-style (`endpoint/bucket/key`) addressing; default true, what S3-compatible servers expect. */
  forcePathStyle?: boolean;
  /** Deadline for one request including retries and its body; default 30 s. */
  requestTimeoutMs?: number;
  /** TCP connect timeout; default 3 s. */
  connectTimeoutMs?: number;
  /** Attempts per request (first try included); default 3. */
  maxAttempts?: number;
}

const NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
  "ECONNABORTED",
]);

interface SdkError {
  name?: string;
  code?: string;
  Code?: string;
  $metadata?: { httpStatusCode?: number };
  cause?: unknown;
}

/** A build store on S3 or an S3-compatible server, path-style, every request with a deadline. */
export class S3Store implements BuildStore {
  readonly description: string;
  readonly #client: S3Client;
  readonly #bucket: string;
  readonly #prefix: string;
  readonly #timeoutMs: number;
  readonly #sources: { accessKeyId: string; secretAccessKey: string };
  #closed = false;

  constructor(options: S3StoreOptions) {
    this.#bucket = options.bucket;
    this.#prefix = options.prefix ? `${checkKey(options.prefix)}/` : "";
    this.#timeoutMs = options.requestTimeoutMs ?? 30_000;
    this.#sources = options.credentialSources ?? {
      accessKeyId: "AWS_ACCESS_KEY_ID",
      secretAccessKey: "AWS_SECRET_ACCESS_KEY",
    };
    this.description = `s3://${options.bucket}/${this.#prefix}${options.endpoint ? ` at ${options.endpoint}` : ""}`;
    this.#client = new S3Client({
      region: options.region,
      ...(options.endpoint ? { endpoint: options.endpoint } : {}),
      ...(options.credentials ? { credentials: options.credentials } : {}),
      forcePathStyle: options.forcePathStyle ?? true,
      maxAttempts: options.maxAttempts ?? 3,
      requestHandler: {
        connectionTimeout: options.connectTimeoutMs ?? 3_000,
        requestTimeout: Math.min(this.#timeoutMs, 10_000),
      },
      // Checksums are ours (sha256 per chunk); the SDK's CRC trailers are not understood by every
      // S3-compatible server.
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
    });
  }

  #key(key: string): string {
    return `${this.#prefix}${checkKey(key)}`;
  }

  #signal(signal: AbortSignal | undefined): AbortSignal {
    if (this.#closed) throw new StoreError("CLOSED", `${this.description} is closed`);
    const deadline = AbortSignal.timeout(this.#timeoutMs);
    return signal ? AbortSignal.any([signal, deadline]) : deadline;
  }

  #error(key: string, action: string, cause: unknown, signal: AbortSignal | undefined): StoreError {
    if (cause instanceof StoreError) return cause;
    const error = cause as SdkError;
    const status = error.$metadata?.httpStatusCode;
    const code = error.Code ?? error.name;
    const where = `${action} ${key} in ${this.description}`;
    if (signal?.aborted && !(signal.reason instanceof DOMException && signal.reason.name === "TimeoutError"))
      return new StoreError("ABORTED", `${where} was aborted`, { key, cause });
    if (code === "InvalidAccessKeyId")
      return new StoreError(
        "CREDENTIALS_REJECTED",
        `${where}: the store does not know the access key id; check ${this.#sources.accessKeyId}`,
        { key, variable: this.#sources.accessKeyId, cause },
      );
    if (code === "SignatureDoesNotMatch")
      return new StoreError(
        "CREDENTIALS_REJECTED",
        `${where}: the request signature does not match; check ${this.#sources.secretAccessKey}`,
        { key, variable: this.#sources.secretAccessKey, cause },
      );
    if (status === 401 || status === 403)
      return new StoreError(
        "CREDENTIALS_REJECTED",
        `${where}: access denied (HTTP ${status}); check ${this.#sources.accessKeyId} and ${this.#sources.secretAccessKey}`,
        { key, variable: this.#sources.accessKeyId, cause },
      );
    if (code === "NoSuchBucket")
      return new StoreError(
        "BUCKET_NOT_FOUND",
        `${where}: bucket ${this.#bucket} does not exist; check SBX_STORE_URL`,
        {
          key,
          variable: "SBX_STORE_URL",
          cause,
        },
      );
    if (code === "NoSuchKey" || code === "NotFound" || status === 404)
      return new StoreError("NOT_FOUND", `${key} is not in ${this.description}`, { key, cause });
    if (code === "InvalidRange" || status === 416)
      return new StoreError("RANGE_INVALID", `${where}: the range is past the object's end`, { key, cause });
    const network = networkCode(cause);
    if (network || status === undefined || status >= 500)
      return new StoreError(
        "STORE_UNREACHABLE",
        `${where} failed: ${network ?? (status ? `HTTP ${status}` : (code ?? "no answer"))}; is the store up and AWS_ENDPOINT_URL right?`,
        { key, cause },
      );
    return new StoreError("STORE_FAILED", `${where} failed: HTTP ${status} ${code ?? ""}`.trim(), {
      key,
      cause,
    });
  }

  async #send<T>(
    key: string,
    action: string,
    signal: AbortSignal | undefined,
    run: (signal: AbortSignal) => Promise<T>,
  ) {
    const bounded = this.#signal(signal);
    try {
      return await run(bounded);
    } catch (cause) {
      throw this.#error(key, action, cause, signal);
    }
  }

  async put(key: string, body: PutBody, options: RequestOptions = {}): Promise<void> {
    const Key = this.#key(key);
    await this.#send(key, "putting", options.signal, async (abortSignal) => {
      if (body instanceof Uint8Array) {
        await this.#client.send(new PutObjectCommand({ Bucket: this.#bucket, Key, Body: body }), {
          abortSignal,
        });
        return;
      }
      const start = body.offset ?? 0;
      const length = body.length ?? (await stat(body.path)).size - start;
      const stream = createReadStream(body.path, { start, end: start + length - 1 });
      try {
        await this.#client.send(
          new PutObjectCommand({
            Bucket: this.#bucket,
            Key,
            Body: length === 0 ? new Uint8Array() : stream,
            ContentLength: length,
          }),
          { abortSignal },
        );
      } finally {
        stream.destroy();
      }
    });
  }

  async get(key: string, options: GetOptions = {}): Promise<Buffer> {
    const Key = this.#key(key);
    const offset = options.offset ?? 0;
    checkRange(key, offset, options.length);
    if (options.length === 0) return Buffer.alloc(0);
    const ranged = options.offset !== undefined || options.length !== undefined;
    const Range = ranged
      ? `bytes=${offset}-${options.length === undefined ? "" : offset + options.length - 1}`
      : undefined;
    return this.#send(key, "reading", options.signal, async (abortSignal) => {
      const response = await this.#client.send(new GetObjectCommand({ Bucket: this.#bucket, Key, Range }), {
        abortSignal,
      });
      const body = response.Body;
      if (!body) throw new StoreError("STORE_FAILED", `reading ${key}: the store sent no body`, { key });
      // The deadline also covers the body: a server that stops sending mid-object aborts the read.
      const onAbort = () =>
        (body as unknown as { destroy?: (error: unknown) => void }).destroy?.(abortSignal.reason);
      abortSignal.addEventListener("abort", onAbort, { once: true });
      try {
        const limit = options.length ?? options.maxBytes ?? DEFAULT_MAX_GET_BYTES;
        if (response.ContentLength !== undefined && response.ContentLength > limit)
          throw new StoreError(
            "STORE_FAILED",
            `reading ${key}: ${response.ContentLength} bytes, more than ${limit}`,
            {
              key,
            },
          );
        const parts: Buffer[] = [];
        let received = 0;
        // Counted as it arrives: a server that sends more than it announced is cut off, not buffered.
        for await (const part of body as unknown as AsyncIterable<Uint8Array>) {
          received += part.length;
          if (received > limit)
            throw new StoreError("STORE_FAILED", `reading ${key}: the store sent more than ${limit} bytes`, {
              key,
            });
          parts.push(Buffer.from(part.buffer, part.byteOffset, part.length));
        }
        const bytes = Buffer.concat(parts, received);
        if (options.length !== undefined && bytes.length !== options.length)
          throw new StoreError(
            "STORE_UNREACHABLE",
            `reading ${key}: got ${bytes.length} of ${options.length} bytes; the connection ended early`,
            { key },
          );
        return bytes;
      } finally {
        abortSignal.removeEventListener("abort", onAbort);
      }
    });
  }

  async head(key: string, options: RequestOptions = {}): Promise<StoredObject | undefined> {
    const Key = this.#key(key);
    try {
      return await this.#send(key, "stat of", options.signal, async (abortSignal) => {
        const response = await this.#client.send(new HeadObjectCommand({ Bucket: this.#bucket, Key }), {
          abortSignal,
        });
        return { key, sizeBytes: response.ContentLength ?? 0 };
      });
    } catch (error) {
      if (error instanceof StoreError && error.code === "NOT_FOUND") return undefined;
      throw error;
    }
  }

  async list(prefix: string, options: RequestOptions = {}): Promise<StoredObject[]> {
    checkPrefix(prefix);
    const found: StoredObject[] = [];
    let ContinuationToken: string | undefined;
    do {
      const page = await this.#send(prefix, "listing", options.signal, (abortSignal) =>
        this.#client.send(
          new ListObjectsV2Command({
            Bucket: this.#bucket,
            Prefix: `${this.#prefix}${prefix}`,
            ContinuationToken,
          }),
          { abortSignal },
        ),
      );
      for (const object of page.Contents ?? [])
        if (object.Key)
          found.push({ key: object.Key.slice(this.#prefix.length), sizeBytes: object.Size ?? 0 });
      ContinuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (ContinuationToken);
    return found.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async delete(key: string, options: RequestOptions = {}): Promise<void> {
    const Key = this.#key(key);
    await this.#send(key, "removing", options.signal, (abortSignal) =>
      this.#client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key }), { abortSignal }),
    );
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#closed = true;
    this.#client.destroy();
  }
}

function networkCode(cause: unknown): string | undefined {
  for (let error = cause as SdkError | undefined, depth = 0; error && depth < 5; depth++) {
    if (error.code && NETWORK_CODES.has(error.code)) return error.code;
    if (error.name === "TimeoutError" || error.name === "AbortError") return "timed out";
    error = error.cause as SdkError | undefined;
  }
  return undefined;
}
