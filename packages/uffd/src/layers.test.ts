import { closeSync, fstatSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { UffdError } from "./errors.ts";
import { openNativeHelper } from "./helper-binding.ts";
import { lseekExtents, mapLayers } from "./layers.ts";
import { leakCheck } from "./test-counts.ts";
import { buildTestNativeHelper } from "./test-native-helper.ts";

const PAGE = 4096;
const nativeHelper = buildTestNativeHelper();
afterAll(() => nativeHelper.remove());

let dir: string;
let checkLeaks: () => Promise<void>;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "sbx-uffd-extents-"));
  checkLeaks = leakCheck();
});
afterEach(async () => {
  await checkLeaks();
  rmSync(dir, { recursive: true, force: true });
});

/** A sparse file of `pages` pages where only `written` hold data (with `partial` bytes at `tail`). */
function sparseFile(pages: number, written: Iterable<number>, tail?: { at: number; bytes: number }): string {
  const path = join(dir, `sparse-${Math.random().toString(36).slice(2)}`);
  const fd = openSync(path, "w");
  try {
    const data = Buffer.alloc(PAGE, 0xab);
    for (const page of written) writeSync(fd, data, 0, PAGE, page * PAGE);
    if (tail) writeSync(fd, data, 0, tail.bytes, tail.at);
    ftruncateSync(fd, pages * PAGE);
  } finally {
    closeSync(fd);
  }
  return path;
}

function withFd<T>(path: string, use: (fd: number, size: number) => T): T {
  const fd = openSync(path, "r");
  try {
    return use(fd, fstatSync(fd).size);
  } finally {
    closeSync(fd);
  }
}

describe("a diff layer's data extents", () => {
  it("lseek finds exactly the written pages; an empty diff has none", () => {
    const pages = sparseFile(64, [0, 1, 2, 10, 63]);
    expect(withFd(pages, lseekExtents)).toEqual([
      { offset: 0, length: 3 * PAGE },
      { offset: 10 * PAGE, length: PAGE },
      { offset: 63 * PAGE, length: PAGE },
    ]);
    expect(withFd(sparseFile(64, []), lseekExtents)).toEqual([]);
  });

  it.skipIf(!nativeHelper.path)(
    "the native helper lists the same extents, across its 4096-per-call batches",
    () => {
      const cleanups: (() => void)[] = [];
      try {
        const native = openNativeHelper(nativeHelper.path as string, cleanups);
        // Every other page: 5000 one-page extents, more than one call's worth.
        const scattered = sparseFile(
          10_001,
          Array.from({ length: 5000 }, (_, i) => 2 * i + 1),
        );
        const listed = withFd(scattered, native.listExtents);
        expect(listed).toHaveLength(5000);
        expect(listed).toEqual(withFd(scattered, lseekExtents));
        expect(withFd(sparseFile(16, []), native.listExtents)).toEqual([]);
      } finally {
        for (const cleanup of cleanups.splice(0)) cleanup();
      }
    },
  );

  it("maps layers: a partial page counts as the diff's page; ranges past a diff are refused", () => {
    const cleanups: (() => void)[] = [];
    try {
      const base = sparseFile(
        16,
        Array.from({ length: 16 }, (_, i) => i),
      );
      const diff = sparseFile(16, [3], { at: 7 * PAGE + 100, bytes: 10 });
      const layers = mapLayers([{ path: base }, { path: diff }], cleanups);
      const [baseAt, diffAt] = layers.addresses as [number, number];
      expect(layers.size).toBe(16 * PAGE);
      expect(layers.sourceFor(3 * PAGE + 5)).toBe(diffAt + 3 * PAGE + 5);
      expect(layers.sourceFor(7 * PAGE)).toBe(diffAt + 7 * PAGE);
      expect(layers.sourceFor(8 * PAGE)).toBe(baseAt + 8 * PAGE);
      expect(() =>
        mapLayers([{ path: base }, { path: diff, ranges: [{ offset: 16 * PAGE, length: PAGE }] }], cleanups),
      ).toThrow(UffdError);
    } finally {
      for (const cleanup of cleanups.splice(0)) cleanup();
    }
  });
});
