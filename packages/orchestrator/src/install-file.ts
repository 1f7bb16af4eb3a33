// Puts a verified file at its artifact path so that no reader ever sees half of it.
import { randomBytes } from "node:crypto";
import { copyFile, mkdir, open, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

async function fsyncPath(path: string, mode?: number): Promise<void> {
  const handle = await open(path, "r");
  try {
    if (mode !== undefined) await handle.chmod(mode);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function writeDurable(path: string, text: string): Promise<void> {
  const handle = await open(path, "wx", 0o644);
  try {
    await handle.writeFile(text);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Copies `source` to `target` and writes `target.sha256` (sha256sum form) beside it, each under a
 * temp name, fsynced, then renamed; the directory is fsynced last. The binary goes first: until the
 * sidecar follows, a reader that checks sidecars sees a mismatch and refuses, never a wrong file.
 */
export async function installVerifiedFile(
  source: string,
  target: string,
  sha256: string,
  mode: number,
  extra: Record<string, string> = {},
): Promise<void> {
  const dir = dirname(target);
  const name = basename(target);
  await mkdir(dir, { recursive: true });
  const suffix = `.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
  const staged = new Map<string, string>([
    [join(dir, `.${name}${suffix}`), target],
    [join(dir, `.${name}.sha256${suffix}`), `${target}.sha256`],
  ]);
  for (const file of Object.keys(extra)) staged.set(join(dir, `.${file}${suffix}`), join(dir, file));
  try {
    const [binaryTemp, sidecarTemp, ...extraTemps] = [...staged.keys()];
    await copyFile(source, binaryTemp!);
    await fsyncPath(binaryTemp!, mode);
    await writeDurable(sidecarTemp!, `${sha256}  ${name}\n`);
    const extraTexts = Object.values(extra);
    for (const [index, temp] of extraTemps.entries()) await writeDurable(temp, extraTexts[index]!);
    for (const [temp, final] of staged) await rename(temp, final);
    await fsyncPath(dir);
  } finally {
    await Promise.all([...staged.keys()].map((temp) => rm(temp, { force: true })));
  }
}
