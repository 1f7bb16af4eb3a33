// The memory layer stack a fault worker serves from: a full memory file, then diffs, newest last.
import { closeSync, fstatSync, openSync } from "node:fs";
import { check, UffdError } from "./errors.ts";
import { PAGE_4K } from "./kernel.ts";
import { ENXIO, libc, MAP_PRIVATE, PROT_READ, SEEK_DATA, SEEK_HOLE } from "./libc.ts";
import { NativeMemory } from "./native-memory.ts";
import type { WorkerConfig } from "./worker-protocol.ts";

export interface ByteExtent {
  offset: number;
  length: number;
}

/** Lists a sparse file's data extents, unaligned: what SEEK_DATA and SEEK_HOLE report. */
export type ExtentLister = (fd: number, size: number) => ByteExtent[];

export interface Layers {
  /** The base layer's size: every region must lie inside it. */
  size: number;
  /** Where each layer is mapped, base first. */
  addresses: readonly number[];
  /**
   * Native memory holding, per 4 KiB page of the memory file, the index of the newest layer that has it;
   * 0 when there is only the base. Native so that the batch helper reads the same table.
   */
  layerOfPage: number;
  /** Where the bytes of memory-file offset `offset` are mapped, from the newest layer that has them. */
  sourceFor(offset: number): number;
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
  let table: NativeMemory | undefined;
  let baseSize = 0;
  layers.forEach((layer, index) => {
    let fd: number;
    try {
      fd = openSync(layer.path, "r");
    } catch (cause) {
      throw new UffdError("MEMORY_FILE_INVALID", `cannot open memory layer ${layer.path}`, { cause });
    }
    try {
      const size = fstatSync(fd).size;
      if (size === 0) throw new UffdError("MEMORY_FILE_INVALID", `memory layer ${layer.path} is empty`);
      const address = check(`mmap(${layer.path})`, libc.mmap(0, size, PROT_READ, MAP_PRIVATE, fd, 0));
      cleanups.push(() => libc.munmap(address, size));
      addresses.push(address);
      if (index === 0) {
        baseSize = size;
        return;
      }
      if (index > 255) throw new UffdError("INVALID_OPTIONS", "at most 256 memory layers");
      if (!table) {
        const created = new NativeMemory(Math.ceil(baseSize / PAGE_4K)); // anonymous: zeroed, layer 0
        cleanups.push(() => created.free());
        table = created;
      }
      const ranges = layer.ranges ?? listExtents(fd, size).map((extent) => toPages(extent, size));
      for (const range of ranges) {
        if (range.offset % PAGE_4K || range.length % PAGE_4K || range.offset + range.length > size)
          throw new UffdError(
            "MEMORY_FILE_INVALID",
            `layer ${layer.path}: range ${range.offset}+${range.length} is unaligned or past its ${size} bytes`,
          );
        table.bytes.fill(
          index,
          range.offset / PAGE_4K,
          Math.min(table.length, (range.offset + range.length) / PAGE_4K),
        );
      }
    } finally {
      closeSync(fd); // the mapping keeps the file alive
    }
  });
  const base = addresses[0] as number;
  const layerOf = table?.bytes;
  return {
    size: baseSize,
    addresses,
    layerOfPage: table?.address ?? 0,
    sourceFor: layerOf
      ? (offset) => (addresses[layerOf[Math.floor(offset / PAGE_4K)] ?? 0] as number) + offset
      : (offset) => base + offset,
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
