// The memory layer stack a fault worker serves from: a full memory file, then diffs, newest last. A
// lazy layer's memory lives in a build store: its place is reserved up front, and each chunk is mapped
// over its part of the reservation when it arrives (from the host's chunk cache, whose page cache every
// sandbox of that build shares). Until then its pages are marked absent, and nothing reads them.
import { closeSync, fstatSync, openSync } from "node:fs";
import { check, UffdError } from "./errors.ts";
import { libc } from "./libc.ts";
import {
  ENXIO,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_NORESERVE,
  MAP_PRIVATE,
  PAGE_4K,
  PROT_READ,
  SEEK_DATA,
  SEEK_HOLE,
} from "./linux.ts";
import { NativeMemory } from "./native-memory.ts";
import type { WorkerConfig } from "./worker-protocol.ts";

export interface ByteExtent {
  offset: number;
  length: number;
}

/** Lists a sparse file's data extents, unaligned: what SEEK_DATA and SEEK_HOLE report. */
export type ExtentLister = (fd: number, size: number) => ByteExtent[];

/** layerOfPage's value for a page whose chunk has not arrived (the native helper's SBX_LAYER_ABSENT). */
export const LAYER_ABSENT = 255;

/** A lazy layer's chunk: the unit that is fetched and mapped. */
export interface LayerChunk {
  layer: number;
  index: number;
}

/** One number per chunk, for the maps both sides keep of what was asked for. */
export const chunkKey = (chunk: LayerChunk): number => chunk.layer * 2 ** 32 + chunk.index;

export interface Layers {
  /** The base layer's size: every region must lie inside it. */
  size: number;
  /** Where each layer is mapped, base first. */
  addresses: readonly number[];
  /**
   * Native memory holding, per 4 KiB page of the memory file, the index of the newest layer that has it
   * (LAYER_ABSENT while its chunk is on its way); 0 when there is only the base and it is local. Native
   * so that the batch helper reads the same table.
   */
  layerOfPage: number;
  /** Where the bytes of memory-file offset `offset` are mapped, from the newest layer that has them. */
  sourceFor(offset: number): number;
  /** The chunk the page at `offset` waits for, or undefined when its bytes are mapped. */
  absentChunk(offset: number): LayerChunk | undefined;
  /**
   * Maps an arrived chunk (`path`, exactly the chunk's length; undefined for a chunk of zeros, which the
   * reservation already reads as) over its place and marks its pages present; returns its byte range.
   */
  installChunk(chunk: LayerChunk, path: string | undefined): { offset: number; length: number };
}

/**
 * Maps the layer stack privately and read-only. A diff has a page when its ranges (or, without them,
 * its data extents, which is what a Diff snapshot wrote) cover it; a hole inherits from the layer
 * below, never zero. Every mapping and the table are released by the functions pushed to `cleanups`.
 */
export function mapLayers(
  layers: WorkerConfig["layers"],
  cleanups: (() => void)[],
  listExtents: ExtentLister = lseekExtents,
): Layers {
  const addresses: number[] = [];
  const lazy = layers.some((layer) => layer.lazy !== undefined);
  if (layers.length > (lazy ? LAYER_ABSENT : 256))
    throw new UffdError("INVALID_OPTIONS", `at most ${lazy ? LAYER_ABSENT : 256} memory layers`);
  let table: NativeMemory | undefined;
  /** The layer each page comes from once present: the table without the absent marks. */
  let owner: Uint8Array | undefined;
  let baseSize = 0;
  const newTable = () => {
    const created = new NativeMemory(Math.ceil(baseSize / PAGE_4K)); // anonymous: zeroed, layer 0
    cleanups.push(() => created.free());
    owner = new Uint8Array(created.length);
    return created;
  };
  const checkRange = (name: string, range: ByteExtent, size: number) => {
    if (range.offset % PAGE_4K || range.length % PAGE_4K || range.offset + range.length > size)
      throw new UffdError(
        "MEMORY_FILE_INVALID",
        `layer ${name}: range ${range.offset}+${range.length} is unaligned or past its ${size} bytes`,
      );
  };
  layers.forEach((layer, index) => {
    if (layer.lazy) {
      const { size, chunkSize } = layer.lazy;
      if (index === 0) baseSize = size;
      if (size !== baseSize || size % PAGE_4K || chunkSize % PAGE_4K || chunkSize <= 0 || !layer.ranges)
        throw new UffdError(
          "INVALID_OPTIONS",
          `lazy layer ${index}: size ${size} and chunk size ${chunkSize} must be page multiples, the size the base's (${baseSize}), and its ranges given`,
        );
      // Reads as zeros until a chunk is mapped over it; costs address space only.
      const address = check(
        "mmap(lazy layer)",
        libc.mmap(0, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
      );
      cleanups.push(() => libc.munmap(address, size));
      addresses.push(address);
      table ??= newTable();
      for (const range of layer.ranges) {
        checkRange(`${index} (lazy)`, range, size);
        const first = range.offset / PAGE_4K;
        const end = Math.min(table.length, (range.offset + range.length) / PAGE_4K);
        table.bytes.fill(LAYER_ABSENT, first, end);
        owner?.fill(index, first, end);
      }
      return;
    }
    const path = layer.path;
    if (path === undefined)
      throw new UffdError("INVALID_OPTIONS", `memory layer ${index} has neither a path nor a lazy source`);
    let fd: number;
    try {
      fd = openSync(path, "r");
    } catch (cause) {
      throw new UffdError("MEMORY_FILE_INVALID", `cannot open memory layer ${path}`, { cause });
    }
    try {
      const size = fstatSync(fd).size;
      if (size === 0) throw new UffdError("MEMORY_FILE_INVALID", `memory layer ${path} is empty`);
      const address = check(`mmap(${path})`, libc.mmap(0, size, PROT_READ, MAP_PRIVATE, fd, 0));
      cleanups.push(() => libc.munmap(address, size));
      addresses.push(address);
      if (index === 0) {
        baseSize = size; // a new table says layer 0 for every page
        return;
      }
      table ??= newTable();
      const ranges = layer.ranges ?? listExtents(fd, size).map((extent) => toPages(extent, size));
      for (const range of ranges) {
        checkRange(path, range, size);
        const first = range.offset / PAGE_4K;
        const end = Math.min(table.length, (range.offset + range.length) / PAGE_4K);
        table.bytes.fill(index, first, end);
        owner?.fill(index, first, end);
      }
    } finally {
      closeSync(fd); // the mapping keeps the file alive
    }
  });
  const base = addresses[0] as number;
  const layerOf = table?.bytes;
  const chunkSizeOf = (layer: number) => layers[layer]?.lazy?.chunkSize;
  return {
    size: baseSize,
    addresses,
    layerOfPage: table?.address ?? 0,
    sourceFor: layerOf
      ? (offset) => (addresses[layerOf[Math.floor(offset / PAGE_4K)] ?? 0] as number) + offset
      : (offset) => base + offset,
    absentChunk(offset) {
      const page = Math.floor(offset / PAGE_4K);
      if (!layerOf || layerOf[page] !== LAYER_ABSENT) return undefined;
      const layer = owner?.[page] ?? 0;
      return { layer, index: Math.floor(offset / (chunkSizeOf(layer) as number)) };
    },
    installChunk({ layer, index }, path) {
      const chunkSize = chunkSizeOf(layer);
      const offset = chunkSize === undefined ? -1 : index * chunkSize;
      if (
        chunkSize === undefined ||
        !layerOf ||
        !owner ||
        !Number.isInteger(index) ||
        offset < 0 ||
        offset >= baseSize
      )
        throw new UffdError("INVALID_OPTIONS", `there is no chunk ${index} of a lazy layer ${layer}`);
      const length = Math.min(chunkSize, baseSize - offset);
      if (path !== undefined) {
        const fd = (() => {
          try {
            return openSync(path, "r");
          } catch (cause) {
            throw new UffdError(
              "MEMORY_FILE_INVALID",
              `cannot open chunk ${index} of layer ${layer} at ${path}`,
              {
                cause,
              },
            );
          }
        })();
        try {
          const size = fstatSync(fd).size;
          if (size !== length)
            throw new UffdError(
              "MEMORY_FILE_INVALID",
              `chunk ${index} of layer ${layer} (${path}) has ${size} bytes, not ${length}`,
            );
          check(
            `mmap(${path})`,
            libc.mmap(
              (addresses[layer] as number) + offset,
              length,
              PROT_READ,
              MAP_PRIVATE | MAP_FIXED,
              fd,
              0,
            ),
          );
        } finally {
          closeSync(fd);
        }
      }
      const first = offset / PAGE_4K;
      const end = Math.ceil((offset + length) / PAGE_4K);
      for (let page = first; page < end; page++)
        if (owner[page] === layer && layerOf[page] === LAYER_ABSENT) layerOf[page] = layer;
      return { offset, length };
    },
  };
}

/** Widens an extent to whole pages: a page with any data in it is the diff's page. */
function toPages(extent: ByteExtent, size: number): ByteExtent {
  const start = extent.offset - (extent.offset % PAGE_4K);
  const end = Math.min(size, Math.ceil((extent.offset + extent.length) / PAGE_4K) * PAGE_4K);
  return { offset: start, length: end - start };
}

/** Two ffi calls per extent (~10 µs): the fallback when the native helper's loop is not there. */
export function lseekExtents(fd: number, size: number): ByteExtent[] {
  const extents: ByteExtent[] = [];
  let position = 0;
  while (position < size) {
    const data = libc.lseek(fd, position, SEEK_DATA);
    if (data.value < 0) {
      if (data.errno === ENXIO) break; // no more data
      check("lseek(SEEK_DATA)", data);
    }
    const hole = check("lseek(SEEK_HOLE)", libc.lseek(fd, data.value, SEEK_HOLE));
    extents.push({ offset: data.value, length: hole - data.value });
    position = hole;
  }
  return extents;
}
