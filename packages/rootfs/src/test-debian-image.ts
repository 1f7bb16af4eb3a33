import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);

export const DEBIAN_SUITE = "bookworm";
export const DEBIAN_MIRROR = "http://deb.debian.org/debian";
const CACHE_ROOT = fileURLToPath(new URL("../../../.cache/rootfs-debian-minbase/", import.meta.url));
/**
 * Packages on top of minbase: iputils-ping is the binary that carries a file capability
 * (cap_net_raw=ep, set by its postinst with libcap2-bin's setcap), and libcap2-bin gives the image
 * getcap/setcap/capsh for the capability check inside the unpacked root.
 */
export const DEBIAN_INCLUDES = ["iputils-ping", "libcap2-bin"] as const;
/**
 * xattrs set on the debootstrapped tree before umoci packs it, so the comparison covers what
 * Debian itself does not ship: a POSIX ACL (user 1000 rw, mask rw) and a default ACL, and a `user.`
 * xattr. Values are the kernel's xattr formats (version 2 ACL, entries tag/perm/id little-endian).
 */
export const DEBIAN_EXTRA_XATTRS: readonly { path: string; name: string; value: string }[] = [
  {
    path: "etc/debian_version",
    name: "system.posix_acl_access",
    value: "0x0200000001000600ffffffff02000600e803000004000400ffffffff10000600ffffffff20000400ffffffff",
  },
  {
    path: "var/tmp",
    name: "system.posix_acl_default",
    value: "0x0200000001000700ffffffff02000700e803000004000500ffffffff10000700ffffffff20000500ffffffff",
  },
  { path: "etc/debian_version", name: "user.sbx.origin", value: "0x64656269616e" },
];
const RECIPE = createHash("sha256")
  .update(JSON.stringify({ suite: DEBIAN_SUITE, includes: DEBIAN_INCLUDES, xattrs: DEBIAN_EXTRA_XATTRS }))
  .digest("hex")
  .slice(0, 12);

function hasCommand(name: string): boolean {
  return ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].some((dir) => existsSync(join(dir, name)));
}

/** Why the Debian image test cannot run here, or undefined when it can. */
export async function debianImageUnavailable(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return "debootstrap needs root";
  for (const tool of ["debootstrap", "umoci", "setfattr", "getfattr"]) {
    if (!hasCommand(tool))
      return `${tool} is not installed (apt install ${tool.endsWith("fattr") ? "attr" : tool})`;
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
  return join(CACHE_ROOT, `${new Date().toISOString().slice(0, 10)}-${RECIPE}`, "oci");
}

/**
 * An OCI layout (tag `bookworm`) of `debootstrap --variant=minbase --include=<DEBIAN_INCLUDES> bookworm`
 * plus DEBIAN_EXTRA_XATTRS, turned into one layer by `umoci insert`. Built at most once a day per recipe
 * and cached under `.cache/rootfs-debian-minbase/<date>-<recipe hash>/`.
 */
export async function debianMinbaseLayout(): Promise<string> {
  const layout = todayLayout();
  if (existsSync(join(layout, "index.json"))) return layout;
  await mkdir(CACHE_ROOT, { recursive: true });
  const work = await mkdtemp(join(CACHE_ROOT, ".build-"));
  try {
    const rootfs = join(work, "rootfs");
    await run(
      "debootstrap",
      ["--variant=minbase", `--include=${DEBIAN_INCLUDES.join(",")}`, DEBIAN_SUITE, rootfs, DEBIAN_MIRROR],
      { timeout: 10 * 60_000, maxBuffer: 64 * 1024 * 1024 },
    );
    for (const xattr of DEBIAN_EXTRA_XATTRS) {
      await run("setfattr", ["-h", "-n", xattr.name, "-v", xattr.value, join(rootfs, xattr.path)]);
    }
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
