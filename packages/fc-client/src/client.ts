import { type Arch, hostArch } from "@sbx/arch";
import { z } from "zod";
import { archRefusal } from "./arch-rules.ts";
import { FirecrackerApiError, FirecrackerError, FirecrackerVersionError } from "./errors.ts";
import { lenient } from "./lenient.ts";
import {
  OPERATIONS,
  type OperationId,
  type OperationSpec,
  type Operations,
  operationPath,
} from "./operations.ts";
import { errorSchema } from "./schemas.ts";
import { SocketTransport } from "./transport.ts";
import {
  FIELD_SINCE,
  OPERATION_SINCE,
  type ParsedVersion,
  parseFirecrackerVersion,
  versionAtLeast,
} from "./versions.ts";

/** Per-call options of every client method: timeout and AbortSignal. */
export interface CallOptions {
  /** Overrides the client's `timeoutMs` for this call. */
  timeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
}

/**
 * Extra top-level request fields a Firecracker fork accepts, per operation: `{ loadSnapshot: {
 * mem_backend: myBackendSchema } }`. Declared fields are validated with the given schema (replacing
 * the spec's when the name exists) and sent; every other field stays strict.
 */
export type FirecrackerExtensions = { readonly [K in OperationId]?: z.ZodRawShape };

/** The default: the spec, nothing added. */
export type NoExtensions = { readonly [K in OperationId]?: never };

/** What `createFirecrackerClient` needs: the API socket, and optionally the version, arch, timeout and extensions. */
export interface CreateFirecrackerClientOptions<E extends FirecrackerExtensions = NoExtensions> {
  socketPath: string;
  /** The Firecracker version ("1.14.2"); read once from `GET /version` when a call needs it otherwise. */
  version?: string;
  /** The VM's architecture; defaults to the host's. */
  arch?: Arch;
  /** Per-call timeout, 10 s by default. */
  timeoutMs?: number;
  extensions?: E;
}

type BodySchemaOf<K extends OperationId> = Operations[K] extends {
  body: { schema: infer S extends z.ZodType };
}
  ? S
  : never;
type ExtendedInput<K extends OperationId, E extends FirecrackerExtensions> = E[K] extends z.ZodRawShape
  ? Omit<z.input<BodySchemaOf<K>>, keyof E[K]> & z.input<z.ZodObject<E[K]>>
  : z.input<BodySchemaOf<K>>;
type ResultOf<K extends OperationId> = Operations[K] extends {
  response: { schema: infer S extends z.ZodType };
}
  ? z.output<S>
  : undefined;

/** One method per operation of the spec, named by its operationId. */
export type FirecrackerOperations<E extends FirecrackerExtensions = NoExtensions> = {
  readonly [K in OperationId]: Operations[K] extends { body: unknown }
    ? (body: ExtendedInput<K, E>, options?: CallOptions) => Promise<ResultOf<K>>
    : (options?: CallOptions) => Promise<ResultOf<K>>;
};

/** What every client has besides its operations: socket path, arch, version, disposal. */
export interface FirecrackerClientBase extends AsyncDisposable {
  readonly socketPath: string;
  readonly arch: Arch;
  /** The version calls are checked against: the one given, or `GET /version` (asked once). */
  version(options?: CallOptions): Promise<string>;
  /** An unchecked request, for what the spec does not describe; non-2xx still throws FirecrackerApiError. */
  request(method: string, path: string, body?: unknown, options?: CallOptions): Promise<unknown>;
  /** Closes the keep-alive connections. */
  close(): void;
}

/** A typed Firecracker API client: one method per operation of the spec (plus any extensions). */
export type FirecrackerClient<E extends FirecrackerExtensions = NoExtensions> = FirecrackerClientBase &
  FirecrackerOperations<E>;

const DEFAULT_TIMEOUT_MS = 10_000;

interface VersionNeed {
  field?: string;
  minimum: string;
}

/** A typed client for the Firecracker API socket: validates, checks version and arch, then sends. */
export function createFirecrackerClient<E extends FirecrackerExtensions = NoExtensions>(
  options: CreateFirecrackerClientOptions<E>,
): FirecrackerClient<E> {
  const arch = options.arch ?? hostArch();
  const defaultTimeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const transport = new SocketTransport(options.socketPath);
  let knownVersion: Promise<{ text: string; parsed: ParsedVersion }> | undefined;
  if (options.version !== undefined) knownVersion = Promise.resolve(checkedVersion(options.version));

  const send = async (method: string, path: string, body: unknown, call: CallOptions = {}) => {
    const response = await transport.send(
      method,
      path,
      body === undefined ? undefined : JSON.stringify(body),
      {
        timeoutMs: call.timeoutMs ?? defaultTimeoutMs,
        signal: call.signal,
      },
    );
    if (response.status >= 200 && response.status < 300) return response.text;
    throw new FirecrackerApiError({
      status: response.status,
      method,
      path,
      faultMessage: faultOf(response.text),
    });
  };

  const version = (call?: CallOptions) => {
    knownVersion ??= (async () => {
      const answer = await callOperation("getFirecrackerVersion", undefined, call);
      return checkedVersion((answer as { firecracker_version: string }).firecracker_version);
    })();
    // A failed lookup is not remembered: the next call asks again.
    knownVersion.catch(() => {
      knownVersion = undefined;
    });
    return knownVersion;
  };

  const bodySchemas = new Map<OperationId, z.ZodType>();
  for (const [id, operation] of Object.entries(OPERATIONS) as [OperationId, OperationSpec][]) {
    if (!operation.body) continue;
    const extra = options.extensions?.[id];
    if (!extra) bodySchemas.set(id, operation.body.schema);
    else if (operation.body.schema instanceof z.ZodObject)
      bodySchemas.set(id, operation.body.schema.extend(extra));
    else
      throw new FirecrackerError("INVALID_REQUEST", `extensions.${id}: ${id} takes no object body to extend`);
  }
  const responseSchemas = new Map<OperationId, z.ZodType>();
  for (const [id, operation] of Object.entries(OPERATIONS) as [OperationId, OperationSpec][])
    if (operation.response) responseSchemas.set(id, lenient(operation.response.schema));

  async function callOperation(id: OperationId, body: unknown, call?: CallOptions): Promise<unknown> {
    const operation: OperationSpec = OPERATIONS[id];
    let payload: unknown;
    const bodySchema = bodySchemas.get(id);
    if (bodySchema) {
      const parsed = bodySchema.safeParse(body);
      if (!parsed.success)
        throw new FirecrackerError(
          "INVALID_REQUEST",
          `${id} (${operation.method} ${operation.path}) was not sent: ${z.prettifyError(parsed.error)}`,
          { cause: parsed.error },
        );
      payload = parsed.data;
      const refusal = archRefusal(arch, id, payload);
      if (refusal)
        throw new FirecrackerError(
          "ARCH_UNSUPPORTED",
          `${id} was not sent: ${refusal} (client arch: ${arch})`,
        );
    }
    const needs = versionNeeds(id, payload);
    if (needs) await checkVersion(id, needs, call);
    const path = operationPath(operation, payload);
    const text = await send(operation.method, path, payload, call);
    const responseSchema = responseSchemas.get(id);
    if (!responseSchema) return undefined;
    return parseResponse(id, operation, text, responseSchema);
  }

  /** What this call needs from the running version; undefined (the common case) when nothing. */
  function versionNeeds(id: OperationId, payload: unknown): VersionNeed[] | undefined {
    const operationSince = OPERATION_SINCE[id];
    const definition = (OPERATIONS[id] as OperationSpec).body?.definition;
    const fieldSince = definition ? FIELD_SINCE[definition] : undefined;
    if (!operationSince && !fieldSince) return undefined;
    const needs: VersionNeed[] = [];
    if (operationSince) needs.push({ minimum: operationSince });
    if (fieldSince && payload && typeof payload === "object") {
      const declared = options.extensions?.[id] ?? {};
      for (const [field, value] of Object.entries(payload)) {
        const minimum = fieldSince[field];
        if (minimum && value !== undefined && !(field in declared)) needs.push({ field, minimum });
      }
    }
    return needs.length === 0 ? undefined : needs;
  }

  async function checkVersion(id: OperationId, needs: VersionNeed[], call?: CallOptions) {
    const running = await version(call);
    for (const need of needs)
      if (!versionAtLeast(running.parsed, need.minimum))
        throw new FirecrackerVersionError({
          operation: id,
          ...(need.field === undefined ? {} : { field: need.field }),
          version: running.text,
          minimumVersion: need.minimum,
        });
  }

  const client: Record<string, unknown> = {
    socketPath: options.socketPath,
    arch,
    version: async (call?: CallOptions) => (await version(call)).text,
    request: async (method: string, path: string, body?: unknown, options?: CallOptions) => {
      const text = await send(method, path, body, options);
      return text.length === 0 ? undefined : parseJson(`${method} ${path}`, text);
    },
    close: () => transport.close(),
    [Symbol.asyncDispose]: async () => transport.close(),
  };
  for (const [id, operation] of Object.entries(OPERATIONS) as [OperationId, OperationSpec][]) {
    client[id] = operation.body
      ? (body: unknown, call?: CallOptions) => callOperation(id, body, call)
      : (call?: CallOptions) => callOperation(id, undefined, call);
  }
  return client as unknown as FirecrackerClient<E>;
}

function checkedVersion(text: string): { text: string; parsed: ParsedVersion } {
  const parsed = parseFirecrackerVersion(text);
  if (!parsed)
    throw new FirecrackerError(
      "INVALID_REQUEST",
      `"${text}" is not a Firecracker version (expected e.g. "1.14.2")`,
    );
  return { text, parsed };
}

function parseJson(what: string, text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (cause) {
    throw new FirecrackerError("INVALID_RESPONSE", `${what}: the answer is not JSON: ${text.slice(0, 200)}`, {
      cause,
    });
  }
}

function parseResponse(id: OperationId, operation: OperationSpec, text: string, schema: z.ZodType): unknown {
  const what = `${operation.method} ${operation.path}`;
  if (text.length === 0) throw new FirecrackerError("INVALID_RESPONSE", `${what}: the answer has no body`);
  const parsed = schema.safeParse(parseJson(what, text));
  if (!parsed.success)
    throw new FirecrackerError(
      "INVALID_RESPONSE",
      `${id}: the answer is not the spec's ${operation.response?.definition}: ${z.prettifyError(parsed.error)}`,
      { cause: parsed.error },
    );
  return parsed.data;
}

function faultOf(text: string): string | undefined {
  if (text.length === 0) return undefined;
  try {
    const parsed = errorSchema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data.fault_message : undefined;
  } catch {
    return undefined;
  }
}
