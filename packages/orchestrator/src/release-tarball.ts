// Reads the members `sbx setup` needs out of a Firecracker release .tgz, without unpacking the rest.
import { createReadStream } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { createGunzip } from "node:zlib";
import { OrchestratorError } from "./errors.ts";

const BLOCK = 512;
// A pax or GNU long-name header is a few hundred bytes; anything bigger is not a release tarball.
const MAX_META_BYTES = 64 * 1024;

function field(header: Buffer, offset: number, length: number): string {
  const raw = header.subarray(offset, offset + length);
  const end = raw.indexOf(0);
  return raw.toString("utf8", 0, end === -1 ? length : end);
}

function octal(header: Buffer, offset: number, length: number, where: string): number {
  const text = field(header, offset, length).trim();
  if (!/^[0-7]*$/.test(text)) {
    throw new OrchestratorError("ARTIFACT_INVALID", `${where}: a tar header has a malformed size field`, {
      details: { where },
    });
  }
  return text === "" ? 0 : Number.parseInt(text, 8);
}

function paxPath(data: Buffer): string | undefined {
  for (const record of data.toString("utf8").split("\n")) {
    const match = /^\d+ path=(.*)$/.exec(record);
    if (match) return match[1];
  }
  return undefined;
}

/**
 * Streams `archive` (gzip'd tar) and writes each regular-file member named in `wanted` (member path
 * → destination path) to its destination, created exclusively. Stops reading once all are written.
 * Returns the members found; a member larger than `maxMemberBytes` fails the whole extraction.
 */
export async function extractTarMembers(
  archive: string,
  wanted: ReadonlyMap<string, string>,
  maxMemberBytes: number,
): Promise<Set<string>> {
  const found = new Set<string>();
  let pending: Buffer = Buffer.alloc(0);
  let state:
    | { kind: "header" }
    | {
        kind: "data";
        remaining: number;
        padding: number;
        sink: FileHandle | undefined;
        meta?: { type: string; chunks: Buffer[] };
      } = {
    kind: "header",
  };
  let nextName: string | undefined;
  const input = createReadStream(archive);
  const gunzip = createGunzip();
  input.pipe(gunzip);
  const invalid = (why: string, cause?: unknown) =>
    new OrchestratorError("ARTIFACT_INVALID", `${archive} is not a readable release tarball: ${why}`, {
      cause,
      details: { archive },
    });
  try {
    outer: for await (const chunk of gunzip) {
      pending =
        pending.length === 0 ? Buffer.from(chunk as Buffer) : Buffer.concat([pending, chunk as Buffer]);
      for (;;) {
        if (state.kind === "header") {
          if (pending.length < BLOCK) break;
          const header = pending.subarray(0, BLOCK);
          pending = pending.subarray(BLOCK);
          if (header.every((byte) => byte === 0)) break outer;
          const type = String.fromCharCode(header[156] ?? 0);
          const size = octal(header, 124, 12, archive);
          const prefix = header.toString("latin1", 257, 262) === "ustar" ? field(header, 345, 155) : "";
          const name = (
            nextName ?? (prefix ? `${prefix}/${field(header, 0, 100)}` : field(header, 0, 100))
          ).replace(/^\.\//, "");
          const padding = (BLOCK - (size % BLOCK)) % BLOCK;
          if (type === "x" || type === "L") {
            if (size > MAX_META_BYTES) throw invalid(`a ${size}-byte extended header`);
            state = { kind: "data", remaining: size, padding, sink: undefined, meta: { type, chunks: [] } };
            continue;
          }
          nextName = undefined;
          const dest = wanted.get(name);
          let sink: FileHandle | undefined;
          if (dest !== undefined && (type === "0" || type === "\0")) {
            if (size > maxMemberBytes)
              throw invalid(`${name} is ${size} bytes, more than the ${maxMemberBytes}-byte limit`);
            sink = await open(dest, "wx", 0o600);
            found.add(name);
          }
          state = { kind: "data", remaining: size, padding, sink };
          continue;
        }
        const take = Math.min(state.remaining, pending.length);
        if (take > 0) {
          const part = pending.subarray(0, take);
          if (state.sink) await state.sink.write(part);
          state.meta?.chunks.push(Buffer.from(part));
          pending = pending.subarray(take);
          state.remaining -= take;
        }
        if (state.remaining > 0) break;
        if (pending.length < state.padding) break;
        pending = pending.subarray(state.padding);
        if (state.sink) {
          await state.sink.sync();
          await state.sink.close();
        }
        if (state.meta) {
          const data = Buffer.concat(state.meta.chunks);
          nextName = state.meta.type === "L" ? field(data, 0, data.length) : (paxPath(data) ?? nextName);
        }
        state = { kind: "header" };
        if (found.size === wanted.size) break outer;
      }
    }
  } catch (error) {
    if (error instanceof OrchestratorError) throw error;
    throw invalid((error as Error).message, error);
  } finally {
    if (state.kind === "data" && state.sink) await state.sink.close().catch(() => undefined);
    input.destroy();
    gunzip.destroy();
  }
  return found;
}
