import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { open, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import type { z } from "zod";
import { RootfsError } from "./errors.ts";
import {
  type Descriptor,
  type Digest,
  digestSchema,
  type ImageIndex,
  imageIndexSchema,
  ociLayoutFileSchema,
} from "./oci-schemas.ts";
import { TarFormatError, TarParser } from "./tar-reader.ts";

/** Index, manifests and configs larger than this are refused (they are read into memory). */
const MAX_JSON_BLOB = 8 * 1024 * 1024;

/** An OCI image layout (a directory, or a tar of one) opened for reading. */
export interface OciLayout {
  readonly path: string;
  readonly kind: "directory" | "tar";
  /** The parsed `index.json`. */
  readonly index: ImageIndex;
  /** The size of a blob on disk, or undefined when the layout does not have it. */
  blobSize(digest: Digest): Promise<number | undefined>;
  /** The raw bytes of a blob as a stream; the caller verifies digest and size (see `verifyingStream`). */
  openBlob(digest: Digest): Promise<Readable>;
  /** Read a JSON blob named by a descriptor, verify its size and digest, and parse it with a schema. */
  readJsonBlob<T extends z.ZodType>(descriptor: Descriptor, schema: T): Promise<z.infer<T>>;
}

/**
 * Open an OCI image layout: a directory with `oci-layout`, `index.json` and `blobs/`, or an
 * uncompressed tar of one (`skopeo copy ... oci-archive:`, `docker save` since Docker 25). A tar is
 * indexed once (entry offsets) and blobs are then streamed from it in place, never extracted.
 */
export async function readOciLayout(path: string): Promise<OciLayout> {
  const stats = await stat(path).catch((error: unknown) => {
    throw new RootfsError(
      "OCI_LAYOUT_INVALID",
      `cannot open OCI layout ${path}: ${(error as Error).message}`,
      {
        cause: error,
        details: { path },
      },
    );
  });
  const source = stats.isDirectory() ? directorySource(path) : await tarSource(path);
  const layoutFile = await source.readSmall("oci-layout");
  if (layoutFile === undefined) {
    throw new RootfsError(
      "OCI_LAYOUT_INVALID",
      `${path} is not an OCI image layout: it has no oci-layout file. Export the image with \`skopeo copy <src> oci:${path}:<tag>\` (or oci-archive:) or \`docker save\``,
      { details: { path } },
    );
  }
  parseJson(layoutFile, ociLayoutFileSchema, `${path}/oci-layout`);
  const indexBytes = await source.readSmall("index.json");
  if (indexBytes === undefined) {
    throw new RootfsError("OCI_LAYOUT_INVALID", `${path} has no index.json; the OCI layout is incomplete`, {
      details: { path },
    });
  }
  const index = parseJson(indexBytes, imageIndexSchema, `${path}/index.json`);

  const layout: OciLayout = {
    path,
    kind: stats.isDirectory() ? "directory" : "tar",
    index,
    blobSize: (digest) => source.blobSize(blobPath(digest)),
    async openBlob(digest) {
      const stream = await source.open(blobPath(digest));
      if (!stream) throw blobMissing(path, digest);
      return stream;
    },
    async readJsonBlob(descriptor, schema) {
      if (descriptor.size > MAX_JSON_BLOB) {
        throw new RootfsError(
          "OCI_LAYOUT_INVALID",
          `${descriptor.mediaType} ${descriptor.digest} is ${descriptor.size} bytes, more than the ${MAX_JSON_BLOB}-byte limit for JSON documents`,
          { details: { path, digest: descriptor.digest } },
        );
      }
      const bytes = await source.readSmall(blobPath(descriptor.digest), MAX_JSON_BLOB);
      if (bytes === undefined) throw blobMissing(path, descriptor.digest);
      verifyBytes(bytes, descriptor, path);
      return parseJson(bytes, schema, `${path} blob ${descriptor.digest}`);
    },
  };
  return layout;
}

/** `blobs/<algorithm>/<hex>`; the digest was validated by digestSchema, so it cannot contain `/` or `..`. */
export function blobPath(digest: Digest): string {
  const checked = digestSchema.parse(digest);
  const [algorithm, hex] = checked.split(":") as [string, string];
  return `blobs/${algorithm}/${hex}`;
}

function blobMissing(path: string, digest: string): RootfsError {
  return new RootfsError(
    "OCI_BLOB_MISSING",
    `OCI layout ${path} does not contain blob ${digest}; the layout is incomplete (re-export it, or pull it again)`,
    { details: { path, digest } },
  );
}

export function verifyBytes(bytes: Buffer, descriptor: Descriptor, where: string): void {
  if (bytes.length !== descriptor.size) {
    throw new RootfsError(
      "OCI_DIGEST_MISMATCH",
      `blob ${descriptor.digest} in ${where} is ${bytes.length} bytes but its descriptor says ${descriptor.size}; the content was altered or truncated`,
      { details: { digest: descriptor.digest, expectedSize: descriptor.size, actualSize: bytes.length } },
    );
  }
  const [algorithm, expected] = descriptor.digest.split(":") as [string, string];
  const actual = createHash(algorithm).update(bytes).digest("hex");
  if (actual !== expected) {
    throw new RootfsError(
      "OCI_DIGEST_MISMATCH",
      `blob ${descriptor.digest} in ${where} has digest ${algorithm}:${actual}; the content was altered`,
      { details: { digest: descriptor.digest, actual: `${algorithm}:${actual}` } },
    );
  }
}

function parseJson<T extends z.ZodType>(bytes: Buffer, schema: T, where: string): z.infer<T> {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString("utf8"));
  } catch (error) {
    throw new RootfsError("OCI_LAYOUT_INVALID", `${where} is not valid JSON: ${(error as Error).message}`, {
      cause: error,
      details: { where },
    });
  }
  const result = schema.safeParse(value);
  if (!result.success) {
    const issues = result.error.issues.map(
      (issue) => `${issue.path.join(".") || "(root)"}: ${issue.message}`,
    );
    throw new RootfsError(
      "OCI_LAYOUT_INVALID",
      `${where} does not match the OCI schema: ${issues.join("; ")}`,
      {
        cause: result.error,
        details: { where, issues },
      },
    );
  }
  return result.data;
}

interface LayoutSource {
  readSmall(relativePath: string, limit?: number): Promise<Buffer | undefined>;
  blobSize(relativePath: string): Promise<number | undefined>;
  open(relativePath: string): Promise<Readable | undefined>;
}

function directorySource(root: string): LayoutSource {
  return {
    async readSmall(relativePath, limit = MAX_JSON_BLOB) {
      const file = join(root, relativePath);
      const info = await stat(file).catch(() => undefined);
      if (!info?.isFile()) return undefined;
      if (info.size > limit) {
        throw new RootfsError("OCI_LAYOUT_INVALID", `${file} is larger than ${limit} bytes`, {
          details: { file },
        });
      }
      return readFile(file);
    },
    async blobSize(relativePath) {
      const info = await stat(join(root, relativePath)).catch(() => undefined);
      return info?.isFile() ? info.size : undefined;
    },
    async open(relativePath) {
      const file = join(root, relativePath);
      const info = await stat(file).catch(() => undefined);
      if (!info?.isFile()) return undefined;
      return createReadStream(file, { highWaterMark: 1024 * 1024 });
    },
  };
}

interface TarMember {
  offset: number;
  size: number;
}

async function tarSource(tarPath: string): Promise<LayoutSource> {
  const members = new Map<string, TarMember>();
  const parser = new TarParser({
    onEntry(entry, dataOffset) {
      if (entry.type !== "file") return undefined;
      const name = entry.path.replace(/^(\.\/|\/)+/, "");
      members.set(name, { offset: dataOffset, size: entry.size });
      return undefined;
    },
  });
  // Headers only: the data of each member is skipped with a seek, so indexing a multi-GiB archive
  // reads a few KiB per blob.
  const handle = await open(tarPath, "r");
  try {
    const block = Buffer.alloc(512);
    let offset = 0;
    while (!parser.ended) {
      const { bytesRead } = await handle.read(block, 0, 512, offset);
      if (bytesRead === 0) break;
      parser.write(bytesRead === 512 ? block : block.subarray(0, bytesRead));
      offset += bytesRead;
      offset += parser.skipDiscardedData();
    }
    parser.end();
  } catch (error) {
    if (!(error instanceof TarFormatError)) throw error;
    throw new RootfsError(
      "OCI_LAYOUT_INVALID",
      `${tarPath} is neither a directory nor a readable tar of an OCI layout: ${error.message}. Compressed archives are not supported; decompress first`,
      { cause: error, details: { path: tarPath } },
    );
  } finally {
    await handle.close();
  }
  const openMember = (member: TarMember) =>
    createReadStream(tarPath, {
      start: member.offset,
      end: member.offset + member.size - 1,
      highWaterMark: 1024 * 1024,
    });
  return {
    async readSmall(relativePath, limit = MAX_JSON_BLOB) {
      const member = members.get(relativePath);
      if (!member) return undefined;
      if (member.size > limit) {
        throw new RootfsError(
          "OCI_LAYOUT_INVALID",
          `${tarPath}:${relativePath} is larger than ${limit} bytes`,
          {
            details: { path: tarPath, member: relativePath },
          },
        );
      }
      if (member.size === 0) return Buffer.alloc(0);
      const chunks: Buffer[] = [];
      for await (const chunk of openMember(member)) chunks.push(chunk as Buffer);
      return Buffer.concat(chunks);
    },
    async blobSize(relativePath) {
      return members.get(relativePath)?.size;
    },
    async open(relativePath) {
      const member = members.get(relativePath);
      if (!member) return undefined;
      if (member.size === 0) return Readable.from([]);
      return openMember(member);
    },
  };
}
