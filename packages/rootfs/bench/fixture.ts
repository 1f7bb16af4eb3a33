// The benchmark's input: the realistic ~200 MiB, 3-layer OCI image from @sbx/rootfs/testing
// (generateRealisticImage), generated once into a cache directory and reused by later runs.
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { generateRealisticImage } from "../src/testing/index.ts";

const FIXTURE_VERSION = "v2";

export interface BenchFixture {
  /** OCI image layout directory. */
  layout: string;
  /** Compressed layer blobs, in apply order (what `tar -x` gets in the baseline). */
  layers: string[];
  uncompressedBytes: number;
  files: number;
}

export async function ensureBenchFixture(cacheDir: string): Promise<BenchFixture> {
  const root = join(cacheDir, `rootfs-bench-fixture-${FIXTURE_VERSION}`);
  const metaPath = join(root, "fixture.json");
  try {
    return JSON.parse(await readFile(metaPath, "utf8")) as BenchFixture;
  } catch {
    // generate below
  }
  await rm(root, { recursive: true, force: true });
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
