// One measured run of the ext4 benchmark, in its own process so /usr/bin/time sees its peak RSS
// (and that of its children: tar, mkfs.ext4, e2fsck). Prints one JSON line.
import { execFileSync } from "node:child_process";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { archTraits, hostArch } from "@sbx/arch";
import * as rootfs from "../src/index.ts";

const { values } = parseArgs({
  options: {
    variant: { type: "string" },
    layout: { type: "string" },
    layers: { type: "string" },
    work: { type: "string" },
    size: { type: "string" },
    inodes: { type: "string" },
  },
});
const work = values.work as string;
const tree = join(work, "tree");
const image = join(work, "image.ext4");
await rm(work, { recursive: true, force: true });
await mkdir(tree, { recursive: true });
const phases: Record<string, number> = {};
const timed = async <T>(name: string, run: () => Promise<T> | T): Promise<T> => {
  const start = performance.now();
  const result = await run();
  phases[name] = Math.round(performance.now() - start);
  return result;
};
const result: Record<string, unknown> = { variant: values.variant };

if (values.variant === "baseline") {
  const layers = (values.layers as string).split(",");
  await timed("tarExtractMs", () => {
    for (const layer of layers) execFileSync("tar", ["-xf", layer, "-C", tree, "--exclude=.wh.*"]);
  });
  await timed("mkfsMs", () => {
    execFileSync("truncate", ["-s", values.size as string, image]);
    execFileSync("mkfs.ext4", [
      "-q",
      "-F",
      "-t",
      "ext4",
      "-b",
      "4096",
      "-I",
      "256",
      "-N",
      values.inodes as string,
      "-m",
      "0",
      "-L",
      "rootfs",
      "-d",
      tree,
      image,
    ]);
  });
} else {
  await timed("unpackMs", async () => {
    const layout = await rootfs.readOciLayout(values.layout as string);
    await rootfs.unpackImage({ layout, platform: archTraits(hostArch()).ociPlatform, dest: tree });
  });
  const built = await timed("buildExt4Ms", () =>
    rootfs.buildExt4Image({ sourceDir: tree, output: image, size: "auto" }),
  );
  result.sizeBytes = built.sizeBytes;
  result.inodes = built.inodes;
  result.entries = built.estimate.entries;
  result.contentBytes = built.estimate.contentBytes;
}
result.phases = phases;
result.nodeMaxRssKiB = process.resourceUsage().maxRSS;
await rm(work, { recursive: true, force: true });
console.log(JSON.stringify(result));
