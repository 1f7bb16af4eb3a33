import { join } from "node:path";
import type { Arch } from "@sbx/arch";
import { writeBusyboxFixture } from "./busybox-fixture.ts";
import { type TarWriterEntry, writeOciLayout } from "./fixtures.ts";

/** Options of `writeTemplateInputs`. */
export interface TemplateInputsFixtureOptions {
  dir: string;
  arch: Arch;
  /** The image's one layer (gzip). */
  entries: readonly TarWriterEntry[];
  /** The image's command (`Cmd`). */
  cmd: readonly string[];
  /** The layout's directory name under `dir` (default `image`). */
  layoutName?: string;
}

/**
 * What a template build needs with no registry and no apt: `{dir}/busybox`, this host's static busybox
 * laid out for `arch`, and `{dir}/{layoutName}`, an OCI layout of a one-layer image for `arch`.
 */
export async function writeTemplateInputs(
  options: TemplateInputsFixtureOptions,
): Promise<{ busyboxDir: string; layoutDir: string }> {
  const busyboxDir = join(options.dir, "busybox");
  await writeBusyboxFixture({ dir: busyboxDir, arch: options.arch });
  const layoutDir = join(options.dir, options.layoutName ?? "image");
  await writeOciLayout({
    dir: layoutDir,
    images: [
      {
        platform: { os: "linux", architecture: options.arch },
        layers: [{ compression: "gzip", entries: options.entries }],
        runtimeConfig: { Cmd: [...options.cmd] },
      },
    ],
  });
  return { busyboxDir, layoutDir };
}
