// Test helper: a build directory shaped like the orchestrator's, with random memory that has holes.
import { createHash, randomBytes } from "node:crypto";
import { mkdir, open, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { ByteRange } from "./upload.ts";

export interface FakeBuild {
  id: string;
  directory: string;
  manifest: Record<string, unknown> & {
    id: string;
    files: Record<string, { sizeBytes: number; sha256: string }>;
  };
  memoryRanges: ByteRange[];
  memorySize: number;
  rootfsSize: number;
}

const sha = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

/** Writes `owned` random ranges into a sparse memory file of `memorySize` bytes, plus the small files and a rootfs. */
export async function makeFakeBuild(options: {
  parent: string;
  id: string;
  memorySize: number;
  memoryRanges: ByteRange[];
  rootfsSize: number;
}): Promise<FakeBuild> {
  const directory = join(options.parent, options.id);
  await mkdir(directory, { recursive: true });
  const files: Record<string, { sizeBytes: number; sha256: string }> = {};
  const small = async (name: string, bytes: Buffer) => {
    await writeFile(join(directory, name), bytes);
    files[name] = { sizeBytes: bytes.length, sha256: sha(bytes) };
  };
  await small("vmstate", randomBytes(20_000));
  await small("memory.header", randomBytes(300));
  const memory = await open(join(directory, "memory"), "w");
  const ownedDigest = createHash("sha256");
  try {
    await memory.truncate(options.memorySize);
    for (const range of options.memoryRanges) {
      const bytes = randomBytes(range.length);
      ownedDigest.update(bytes);
      await memory.write(bytes, 0, bytes.length, range.offset);
    }
  } finally {
    await memory.close();
  }
  files.memory = { sizeBytes: options.memorySize, sha256: ownedDigest.digest("hex") };
  // A rootfs whose second half is zeros, as a fresh ext4 image mostly is.
  const rootfs = Buffer.alloc(options.rootfsSize);
  randomBytes(Math.floor(options.rootfsSize / 2)).copy(rootfs);
  await small("rootfs.ext4", rootfs);
  const manifest = {
    schemaVersion: 1,
    id: options.id,
    kind: "template",
    template: "fake",
    createdAt: new Date().toISOString(),
    files,
  };
  await writeFile(join(directory, "build.json"), JSON.stringify(manifest));
  return {
    id: options.id,
    directory,
    manifest,
    memoryRanges: options.memoryRanges,
    memorySize: options.memorySize,
    rootfsSize: options.rootfsSize,
  };
}

/** Open fds of this process, for before/after counts. */
export async function openFdCount(): Promise<number> {
  const { readdir } = await import("node:fs/promises");
  return (await readdir("/proc/self/fd")).length;
}

/** Every file under `dir`, relative, recursively. */
export async function filesUnder(dir: string): Promise<string[]> {
  const { readdir } = await import("node:fs/promises");
  return (await readdir(dir, { recursive: true, withFileTypes: true }))
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath, entry.name).slice(dir.length + 1))
    .sort();
}
