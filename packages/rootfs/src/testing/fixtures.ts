/**
 * OCI layout fixtures built on the spot (never downloaded): small layouts for tests, with gzip, zstd
 * or plain layers and single- or multi-platform indexes, and `generateRealisticImage`, the ~200 MiB
 * 3-layer image with many small files that the ext4 benchmark (bench/) builds.
 *
 * Note for the benchmark owner: call `generateRealisticImage({ dir })` once per run (it takes a few
 * seconds; it is deterministic for a given seed) and feed `result.layoutPath` to readOciLayout /
 * unpackImage. `result.layerTarFiles` are the uncompressed layer tars for the `tar -x` baseline,
 * written only when `keepLayerTars: true`.
 */

import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Readable, Transform, type Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import zlib from "node:zlib";
import { xorshift32 } from "@sbx/arch/testing";
import { MEDIA_TYPES, REF_NAME_ANNOTATION } from "../oci-schemas.ts";
import type { PlatformTriple } from "../platform.ts";
import { type TarWriterEntry, tarArchive, tarEnd, tarEntryBytes } from "../tar-writer.ts";

export type { TarWriterEntry } from "../tar-writer.ts";
export { tarArchive } from "../tar-writer.ts";

/** How a fixture layer is compressed. */
export type FixtureCompression = "none" | "gzip" | "zstd";

/** One layer of a fixture image: its tar entries (or a raw tar) and compression. */
export interface FixtureLayer {
  /** Entries to write (names are written verbatim, so hostile names are possible), or a raw tar. */
  entries: readonly TarWriterEntry[] | Buffer;
  compression?: FixtureCompression;
}

/** A fixture image: its platform, layers and runtime config. */
export interface FixtureImage {
  platform: PlatformTriple;
  layers: readonly FixtureLayer[];
  /** Merged into the image config's `config` (Env, Cmd, ...). */
  runtimeConfig?: Record<string, unknown>;
}

/** What `writeOciLayout` writes: the images, a tag, and whether to nest them in an index. */
export interface WriteOciLayoutOptions {
  dir: string;
  images: readonly FixtureImage[];
  tag?: string;
  /** Wrap the manifests in a nested image index (the default when there is more than one image). */
  nestedIndex?: boolean;
  /** Put `platform` on the manifest descriptors (default true; false makes readers consult the config). */
  descriptorPlatforms?: boolean;
}

/** A blob written into a fixture layout: digest, size and media type. */
export interface FixtureBlob {
  digest: string;
  size: number;
  mediaType: string;
}

/** The layout `writeOciLayout` wrote: its directory and each image's manifest, config and layers. */
export interface WrittenLayout {
  dir: string;
  manifests: {
    descriptor: FixtureBlob;
    platform: PlatformTriple;
    layers: FixtureBlob[];
    config: FixtureBlob;
  }[];
  index?: FixtureBlob;
}

const LAYER_MEDIA: Record<FixtureCompression, string> = {
  none: MEDIA_TYPES.ociLayer,
  gzip: MEDIA_TYPES.ociLayerGzip,
  zstd: MEDIA_TYPES.ociLayerZstd,
};

/** The `sha256:<hex>` digest of bytes. */
export function sha256Digest(bytes: Buffer): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** Bytes compressed as a fixture layer asks (none, gzip or zstd). */
export function compress(bytes: Buffer, compression: FixtureCompression): Buffer {
  if (compression === "gzip") return zlib.gzipSync(bytes);
  if (compression === "zstd") return zlib.zstdCompressSync(bytes);
  return bytes;
}

/** Writes bytes as a blob of an OCI layout and returns its descriptor. */
export async function writeBlob(dir: string, bytes: Buffer, mediaType: string): Promise<FixtureBlob> {
  const digest = sha256Digest(bytes);
  await mkdir(join(dir, "blobs", "sha256"), { recursive: true });
  await writeFile(join(dir, "blobs", "sha256", digest.slice(7)), bytes);
  return { digest, size: bytes.length, mediaType };
}

/** Write an OCI image layout with the given images into `dir`. */
export async function writeOciLayout(options: WriteOciLayoutOptions): Promise<WrittenLayout> {
  const { dir } = options;
  await mkdir(join(dir, "blobs", "sha256"), { recursive: true });
  await writeFile(join(dir, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  const manifests: WrittenLayout["manifests"] = [];
  for (const image of options.images) {
    const layers: FixtureBlob[] = [];
    const diffIds: string[] = [];
    for (const layer of image.layers) {
      const tar = Buffer.isBuffer(layer.entries) ? layer.entries : tarArchive(layer.entries);
      const compression = layer.compression ?? "gzip";
      diffIds.push(sha256Digest(tar));
      layers.push(await writeBlob(dir, compress(tar, compression), LAYER_MEDIA[compression]));
    }
    const config = await writeBlob(
      dir,
      Buffer.from(
        JSON.stringify({
          architecture: image.platform.architecture,
          os: image.platform.os,
          ...(image.platform.variant ? { variant: image.platform.variant } : {}),
          config: {
            Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            ...image.runtimeConfig,
          },
          rootfs: { type: "layers", diff_ids: diffIds },
        }),
      ),
      MEDIA_TYPES.ociConfig,
    );
    const manifest = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.ociManifest,
      config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
    };
    const descriptor = await writeBlob(dir, Buffer.from(JSON.stringify(manifest)), MEDIA_TYPES.ociManifest);
    manifests.push({ descriptor, platform: image.platform, layers, config });
  }
  const withPlatform = options.descriptorPlatforms ?? true;
  const manifestDescriptors = manifests.map((m) => ({
    mediaType: m.descriptor.mediaType,
    digest: m.descriptor.digest,
    size: m.descriptor.size,
    ...(withPlatform ? { platform: { ...m.platform } } : {}),
  }));
  const tagAnnotation = options.tag ? { annotations: { [REF_NAME_ANNOTATION]: options.tag } } : {};
  const nested = options.nestedIndex ?? options.images.length > 1;
  let top: object[];
  let index: FixtureBlob | undefined;
  if (nested) {
    index = await writeBlob(
      dir,
      Buffer.from(
        JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests: manifestDescriptors }),
      ),
      MEDIA_TYPES.ociIndex,
    );
    top = [{ mediaType: index.mediaType, digest: index.digest, size: index.size, ...tagAnnotation }];
  } else {
    top = manifestDescriptors.map((d) => ({ ...d, ...tagAnnotation }));
  }
  await writeFile(
    join(dir, "index.json"),
    JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests: top }),
  );
  return index ? { dir, manifests, index } : { dir, manifests };
}

/** What `generateRealisticImage` writes: where, total size, seed, compression and platform. */
export interface RealisticImageOptions {
  /** Where to write the OCI layout (created). */
  dir: string;
  /** Approximate total uncompressed size (default 200 MiB). */
  totalBytes?: number;
  seed?: number;
  compression?: FixtureCompression;
  platform?: PlatformTriple;
  /** Also keep the uncompressed layer tars (for a `tar -x` baseline) under `<dir>/../<name>-tars/`. */
  keepLayerTars?: boolean;
}

/** A generated realistic image: its layout, layers, file and directory counts and uncompressed size. */
export interface RealisticImage {
  layoutPath: string;
  layers: FixtureBlob[];
  /** Uncompressed tar of each layer, in order (only with keepLayerTars). */
  layerTarFiles: string[];
  files: number;
  directories: number;
  uncompressedBytes: number;
}

/** Uniform in [0, 1) from xorshift32: deterministic, fast, good enough for fixture shapes. */
function random(seed: number): () => number {
  const next = xorshift32(seed >>> 0 || 0x9e3779b9);
  return () => next() / 0x100000000;
}

/**
 * A 3-layer image of about `totalBytes` (default 200 MiB) shaped like a distribution plus an app:
 * layer 1 (~60%) a base system of many small files (median ~4 KiB) in a deep tree with a merged-/usr
 * symlink set; layer 2 (~25%) updates: overwritten files, whiteouts, an opaque directory, hard links;
 * layer 3 (~15%) an application with some larger files. Contents are semi-compressible (text-like
 * repeats mixed with noise) so gzip/zstd behave as on real images. Layers are streamed to disk.
 */
export async function generateRealisticImage(options: RealisticImageOptions): Promise<RealisticImage> {
  const total = options.totalBytes ?? 200 * 1024 * 1024;
  const compression = options.compression ?? "gzip";
  const next = random(options.seed ?? 7);
  const dir = options.dir;
  await mkdir(join(dir, "blobs", "sha256"), { recursive: true });
  const tarDir = `${dir}-tars`;
  if (options.keepLayerTars) await mkdir(tarDir, { recursive: true });
  const noise = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < noise.length; i += 4) noise.writeUInt32LE(Math.floor(next() * 0x100000000), i);
  const text = Buffer.from(
    '#include <stdio.h>\n/* Licensed under the Apache License, Version 2.0 */\nstatic const char *message = "hello from the fixture";\n'.repeat(
      8192,
    ),
  );
  const content = (size: number): Buffer => {
    const out = Buffer.allocUnsafe(size);
    let offset = 0;
    while (offset < size) {
      const useNoise = next() < 0.35;
      const source = useNoise ? noise : text;
      const length = Math.min(size - offset, 256 + Math.floor(next() * 4096));
      const start = Math.floor(next() * (source.length - length));
      source.copy(out, offset, start, start + length);
      offset += length;
    }
    return out;
  };
  const smallSize = () => Math.min(256 * 1024, Math.floor(Math.exp(6 + next() * 5)) + 64);

  let files = 0;
  let directories = 0;
  let uncompressedBytes = 0;
  const basePaths: string[] = [];

  const layerBudgets = [total * 0.6, total * 0.25, total * 0.15];
  const layers: FixtureBlob[] = [];
  const layerTarFiles: string[] = [];
  const diffIds: string[] = [];
  const mtime = 1_700_000_000;

  for (const [layerIndex, budget] of layerBudgets.entries()) {
    const entries = function* (): Generator<TarWriterEntry> {
      let written = 0;
      if (layerIndex === 0) {
        for (const d of [
          "usr",
          "usr/bin",
          "usr/lib",
          "usr/sbin",
          "usr/share",
          "etc",
          "var",
          "var/lib",
          "tmp",
          "root",
        ]) {
          directories++;
          yield { path: `${d}/`, type: "directory", mode: d === "tmp" ? 0o1777 : 0o755, mtime };
        }
        for (const [link, target] of [
          ["bin", "usr/bin"],
          ["lib", "usr/lib"],
          ["sbin", "usr/sbin"],
        ] as const) {
          yield { path: link, type: "symlink", linkPath: target, mtime };
        }
        let packageIndex = 0;
        while (written < budget) {
          const top = ["usr/lib", "usr/share", "usr/share/doc", "etc"][packageIndex % 4]!;
          const packageDir = `${top}/pkg${packageIndex}`;
          directories++;
          yield { path: `${packageDir}/`, type: "directory", mode: 0o755, mtime };
          const count = 5 + Math.floor(next() * 40);
          for (let i = 0; i < count && written < budget; i++) {
            const sub = i % 7 === 0 ? `${packageDir}/sub${i}` : packageDir;
            if (sub !== packageDir) {
              directories++;
              yield { path: `${sub}/`, type: "directory", mode: 0o755, mtime };
            }
            const size = smallSize();
            const path = `${sub}/file${i}.dat`;
            basePaths.push(path);
            files++;
            written += size + 512;
            yield { path, content: content(size), mode: i % 5 === 0 ? 0o755 : 0o644, mtime, uid: 0, gid: 0 };
          }
          const binary = `usr/bin/tool${packageIndex}`;
          files++;
          written += 32 * 1024;
          yield { path: binary, content: content(32 * 1024), mode: 0o755, mtime };
          packageIndex++;
        }
      } else if (layerIndex === 1) {
        yield { path: "usr/share/doc/", type: "directory", mode: 0o755, mtime };
        yield { path: "usr/share/doc/.wh..wh..opq", content: "", mtime };
        for (let i = 0; i < 200; i++) {
          const victim = basePaths[Math.floor(next() * basePaths.length)]!;
          const slash = victim.lastIndexOf("/");
          yield { path: `${victim.slice(0, slash)}/.wh.${victim.slice(slash + 1)}`, content: "", mtime };
        }
        let i = 0;
        while (written < budget) {
          const path = basePaths[Math.floor(next() * basePaths.length)]!;
          if (path.startsWith("usr/share/doc/")) continue;
          const size = smallSize() * 2;
          files++;
          written += size + 512;
          yield { path, content: content(size), mode: 0o644, mtime: mtime + 100 };
          if (i % 50 === 0) yield { path: `${path}.hardlink`, type: "hardlink", linkPath: path, mtime };
          i++;
        }
      } else {
        for (const d of ["srv", "srv/app", "srv/app/lib", "srv/app/assets"]) {
          directories++;
          yield { path: `${d}/`, type: "directory", mode: 0o755, mtime };
        }
        let i = 0;
        while (written < budget) {
          const large = i % 20 === 19;
          const size = large ? 1024 * 1024 + Math.floor(next() * 4 * 1024 * 1024) : smallSize();
          const path = `srv/app/${large ? "assets" : "lib"}/m${i}.${large ? "bin" : "js"}`;
          files++;
          written += size + 512;
          yield {
            path,
            content: content(Math.min(size, Math.max(0, budget - written + size))),
            mode: 0o644,
            mtime,
          };
          i++;
        }
        yield { path: "srv/app/start", type: "symlink", linkPath: "/usr/bin/tool0", mtime };
      }
    };

    const tempBlob = join(dir, "blobs", "sha256", `.layer${layerIndex}.partial`);
    const compressedHash = createHash("sha256");
    const diffHash = createHash("sha256");
    let compressedSize = 0;
    let tarBytes = 0;
    const tarStream = Readable.from(
      (function* () {
        for (const entry of entries()) yield* tarEntryBytes(entry);
        yield tarEnd();
      })(),
    );
    const tap = (hash: ReturnType<typeof createHash>, count: (n: number) => void) =>
      new Transform({
        transform(chunk: Buffer, _encoding, callback) {
          hash.update(chunk);
          count(chunk.length);
          callback(null, chunk);
        },
      });
    const stages: (Transform | Writable)[] = [tap(diffHash, (n) => (tarBytes += n))];
    if (options.keepLayerTars) {
      const tarFile = join(tarDir, `layer${layerIndex}.tar`);
      layerTarFiles.push(tarFile);
      const tarOut = createWriteStream(tarFile);
      stages.push(
        new Transform({
          transform(chunk: Buffer, _encoding, callback) {
            if (tarOut.write(chunk)) callback(null, chunk);
            else tarOut.once("drain", () => callback(null, chunk));
          },
          flush(callback) {
            tarOut.end(callback);
          },
        }),
      );
    }
    if (compression === "gzip") stages.push(zlib.createGzip({ level: 1 }));
    else if (compression === "zstd") stages.push(zlib.createZstdCompress());
    stages.push(tap(compressedHash, (n) => (compressedSize += n)));
    await pipeline(tarStream, ...(stages as [Transform]), createWriteStream(tempBlob));
    uncompressedBytes += tarBytes;
    const digest = `sha256:${compressedHash.digest("hex")}`;
    await rename(tempBlob, join(dir, "blobs", "sha256", digest.slice(7)));
    layers.push({ digest, size: compressedSize, mediaType: LAYER_MEDIA[compression] });
    diffIds.push(`sha256:${diffHash.digest("hex")}`);
  }

  const platform = options.platform ?? {
    os: "linux",
    architecture: process.arch === "arm64" ? "arm64" : "amd64",
  };
  const config = await writeBlob(
    dir,
    Buffer.from(
      JSON.stringify({
        architecture: platform.architecture,
        os: platform.os,
        config: { Cmd: ["/srv/app/start"] },
        rootfs: { type: "layers", diff_ids: diffIds },
      }),
    ),
    MEDIA_TYPES.ociConfig,
  );
  const manifest = await writeBlob(
    dir,
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MEDIA_TYPES.ociManifest,
        config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
        layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
      }),
    ),
    MEDIA_TYPES.ociManifest,
  );
  await writeFile(join(dir, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  await writeFile(
    join(dir, "index.json"),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: manifest.mediaType,
          digest: manifest.digest,
          size: manifest.size,
          annotations: { [REF_NAME_ANNOTATION]: "latest" },
        },
      ],
    }),
  );
  return { layoutPath: dir, layers, layerTarFiles, files, directories, uncompressedBytes };
}

/** Remove a layout written by these helpers (and its `-tars` sibling). */
export async function removeFixture(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  await rm(`${dir}-tars`, { recursive: true, force: true });
}
