// The benchmark's input: the realistic ~200 MiB, 3-layer OCI image from @sbx/rootfs/testing
// (generateRealisticImage), generated once into a cache directory and reused by later runs.
import { createHash } from "node:crypto";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { generateRealisticImage } from "../src/testing/index.ts";

// Keyed by the generator's own source, so a changed generator can never reuse a stale cached image.
async function fixtureKey(): Promise<string> {
  const source = await readFile(fileURLToPath(new URL("../src/testing/fixtures.ts", import.meta.url)));
  return createHash("sha256").update(source).digest("hex").slice(0, 12);
}

export interface BenchFixture {
  /** OCI image layout directory. */
  layout: string;
  /** Compressed layer blobs, in apply order (what `tar -x` gets in the baseline). */
  layers: string[];
  uncompressedBytes: number;
  files: number;
}

export async function ensureBenchFixture(cacheDir: string): Promise<BenchFixture> {
  const root = join(cacheDir, `rootfs-bench-fixture-${await fixtureKey()}`);
  const metaPath = join(root, "fixture.json");
  try {
    return JSON.parse(await readFile(metaPath, "utf8")) as BenchFixture;
  } catch {
    // generate below
  }
  // Images from older generators are ~200 MiB each: drop them rather than let the cache grow.
  for (const entry of await readdir(cacheDir).catch(() => [])) {
    if (entry.startsWith("rootfs-bench-fixture-"))
      await rm(join(cacheDir, entry), { recursive: true, force: true });
  }
  await mkdir(root, { recursive: true });
  const image = await generateRealisticImage({ dir: join(root, "layout"), seed: 7, compression: "gzip" });
  const fixture: BenchFixture = {
    layout: image.layoutPath,
    layers: image.layers.map((l) =>
      join(image.layoutPath, "blobs", "sha256", l.digest.slice("sha256:".length)),
    ),
    uncompressedBytes: image.uncompressedBytes,
    files: image.files,
  };
  await writeFile(metaPath, JSON.stringify(fixture));
  return fixture;
}
