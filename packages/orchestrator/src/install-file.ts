// Puts a verified file at its artifact path so that no reader ever sees half of it.
import { createReadStream } from "node:fs";
import { mkdir } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { writeFileAtomic } from "@sbx/arch";

/**
 * Copies `source` to `target` and writes `target.sha256` (sha256sum form) beside it, then each of
 * `extra` (name → text) in the same directory, every one atomically (`writeFileAtomic`). The binary goes
 * first: until the sidecar follows, a reader that checks sidecars sees a mismatch and refuses, never a
 * wrong file.
 */
export async function installVerifiedFile(
  source: string,
  target: string,
  sha256: string,
  mode: number,
  extra: Record<string, string> = {},
): Promise<void> {
  const dir = dirname(target);
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(target, (handle) => handle.writeFile(createReadStream(source)), { mode });
  await writeFileAtomic(`${target}.sha256`, `${sha256}  ${basename(target)}\n`, { mode: 0o644 });
  for (const [name, text] of Object.entries(extra))
    await writeFileAtomic(join(dir, name), text, { mode: 0o644 });
}
