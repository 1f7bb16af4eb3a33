import { copyFile, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type Arch, sha256File } from "@sbx/arch";
import { DEFAULT_BUSYBOX_VERSION } from "../busybox.ts";

/** Where `writeBusyboxFixture` puts a static busybox (a HOST_BUSYBOX_DIR layout): version, arch, source and sidecar form. */
export interface BusyboxFixtureOptions {
  /** HOST_BUSYBOX_DIR to populate. */
  dir: string;
  /** A static busybox of `arch`; default the host's /bin/busybox (Debian busybox-static). */
  source?: string;
  arch: Arch;
  version?: string;
  /** Sidecar format; "none" writes no sidecar. Default "sha256sum". */
  sidecar?: "bare" | "sha256sum" | "none";
}

/** Lays out `{dir}/{version}/{arch}/busybox` (+ busybox.sha256) from an existing static busybox. */
export async function writeBusyboxFixture(options: BusyboxFixtureOptions): Promise<string> {
  const version = options.version ?? DEFAULT_BUSYBOX_VERSION;
  const target = join(options.dir, version, options.arch);
  await mkdir(target, { recursive: true });
  const path = join(target, "busybox");
  await copyFile(options.source ?? "/bin/busybox", path);
  const sha256 = await sha256File(path);
  if (options.sidecar === "bare") await writeFile(`${path}.sha256`, `${sha256}\n`);
  else if (options.sidecar !== "none") await writeFile(`${path}.sha256`, `${sha256}  busybox\n`);
  return path;
}
