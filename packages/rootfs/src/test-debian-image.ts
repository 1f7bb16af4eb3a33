import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);

export const DEBIAN_SUITE = "bookworm";
export const DEBIAN_MIRROR = "http://deb.debian.org/debian";
const CACHE_ROOT = fileURLToPath(new URL("../../../.cache/rootfs-debian-minbase/", import.meta.url));

function hasCommand(name: string): boolean {
  return ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].some((dir) => existsSync(join(dir, name)));
}

/** Why the Debian image test cannot run here, or undefined when it can. */
export async function debianImageUnavailable(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return "debootstrap needs root";
  for (const tool of ["debootstrap", "umoci"]) {
    if (!hasCommand(tool)) return `${tool} is not installed (apt install ${tool})`;
  }
  if (existsSync(todayLayout())) return undefined;
  try {
    const response = await fetch(`${DEBIAN_MIRROR}/dists/${DEBIAN_SUITE}/Release`, {
      method: "HEAD",
      signal: AbortSignal.timeout(10_000),
    });
    if (!response.ok) return `the Debian mirror answered ${response.status}`;
  } catch (error) {
    return `debootstrap cannot reach the Debian mirror ${DEBIAN_MIRROR}: ${(error as Error).message}`;
  }
  return undefined;
}

function todayLayout(): string {
  return join(CACHE_ROOT, new Date().toISOString().slice(0, 10), "oci");
}

/**
 * An OCI layout (tag `bookworm`) of `debootstrap --variant=minbase bookworm`, turned into one layer by
 * `umoci insert`. Built at most once a day and cached under `.cache/rootfs-debian-minbase/<date>/`.
 */
export async function debianMinbaseLayout(): Promise<string> {
  const layout = todayLayout();
  if (existsSync(join(layout, "index.json"))) return layout;
  await mkdir(CACHE_ROOT, { recursive: true });
  const work = await mkdtemp(join(CACHE_ROOT, ".build-"));
  try {
    const rootfs = join(work, "rootfs");
    await run("debootstrap", ["--variant=minbase", DEBIAN_SUITE, rootfs, DEBIAN_MIRROR], {
      timeout: 10 * 60_000,
      maxBuffer: 64 * 1024 * 1024,
    });
    const oci = join(work, "oci");
    await run("umoci", ["init", "--layout", oci]);
    await run("umoci", ["new", "--image", `${oci}:${DEBIAN_SUITE}`]);
    await run("umoci", ["insert", "--image", `${oci}:${DEBIAN_SUITE}`, rootfs, "/"], { timeout: 5 * 60_000 });
    await run("umoci", ["config", "--image", `${oci}:${DEBIAN_SUITE}`, "--config.cmd", "/bin/bash"]);
    await mkdir(join(layout, ".."), { recursive: true });
    await rename(oci, layout);
    for (const name of await readdir(CACHE_ROOT)) {
      if (!name.startsWith(".") && join(CACHE_ROOT, name, "oci") !== layout) {
        await rm(join(CACHE_ROOT, name), { recursive: true, force: true });
      }
    }
    return layout;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
