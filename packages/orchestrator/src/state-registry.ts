// Which state directory each group of jail cgroups belongs to. A jailed VM's cgroups live under
// `{jailParentCgroup}/{state key}/{id}`, and the key is a hash of the state directory's path, which
// cannot be turned back into the path. So every start records the way back here, and a clean close
// removes the record. When a state directory is deleted after a crash, this record is the only way to
// find its cgroups and any chroots kept outside it. /run is a tmpfs: the record goes at reboot, like
// the cgroups it describes.
import { mkdir, readdir, readFile, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { type Logger, silentLogger, writeFileAtomic } from "@sbx/arch";
import { cgroupVmIds, type RemovedJails } from "@sbx/fc-client";
import { z } from "zod";
import { absolutePath, jailParentCgroupSchema, type OrchestratorConfig } from "./config.ts";
import { jailLayout, removeJailParentCgroups, stateKey, sweepStaleJails } from "./jail-plan.ts";

/** Where the records go: one `{state key}.json` per state directory whose orchestrator has started. */
export const STATE_REGISTRY_DIR = "/run/sbx/state-dirs";

type JailSettings = Pick<OrchestratorConfig, "stateDir" | "jailChrootBaseDir" | "jailParentCgroup">;

// Any root process can write here: a record is read as hostile input.
const registryEntrySchema = z
  .object({
    version: z.literal(1),
    stateDir: absolutePath,
    jailChrootBaseDir: absolutePath.optional(),
    jailParentCgroup: jailParentCgroupSchema,
  })
  .strict();

function entryPath(stateDir: string, registry: string): string {
  return join(registry, `${stateKey(stateDir)}.json`);
}

/** Records where this state directory's jails live; rewritten atomically on every start. */
export async function registerStateDirectory(
  config: JailSettings,
  registry = STATE_REGISTRY_DIR,
): Promise<void> {
  await mkdir(registry, { recursive: true, mode: 0o700 });
  const entry = registryEntrySchema.parse({
    version: 1,
    stateDir: config.stateDir,
    ...(config.jailChrootBaseDir ? { jailChrootBaseDir: config.jailChrootBaseDir } : {}),
    jailParentCgroup: config.jailParentCgroup,
  });
  await writeFileAtomic(entryPath(config.stateDir, registry), `${JSON.stringify(entry)}\n`);
}

/** Drops the record on a clean close: nothing of this state directory is left for anyone to find. */
export async function unregisterStateDirectory(
  config: JailSettings,
  registry = STATE_REGISTRY_DIR,
): Promise<void> {
  await rm(entryPath(config.stateDir, registry), { force: true });
}

/** What the sweep did for one deleted state directory. */
export interface DeletedStateDirectory {
  stateDir: string;
  jails: RemovedJails;
  /** False while one of its jails still has a live process: the record stays, for the next start. */
  forgotten: boolean;
}

/**
 * For every recorded state directory that no longer exists (other than `config`'s own): removes the
 * jails under its cgroup group that no process runs in (their cgroups, and their chroots when kept
 * outside the deleted directory), then the group, then the record. A state directory that exists is
 * its own orchestrator's to reclaim, so it is left alone.
 */
export async function sweepDeletedStateDirectories(
  config: JailSettings,
  options: { logger?: Logger; registry?: string } = {},
): Promise<DeletedStateDirectory[]> {
  const logger = options.logger ?? silentLogger;
  const registry = options.registry ?? STATE_REGISTRY_DIR;
  const swept: DeletedStateDirectory[] = [];
  const names = await readdir(registry).catch(() => [] as string[]);
  const own = `${stateKey(config.stateDir)}.json`;
  for (const name of names.filter((n) => /^[0-9a-f]{12}\.json$/.test(n) && n !== own)) {
    const entry = await readEntry(join(registry, name));
    // A record whose name is not its own path's key was not written by registerStateDirectory.
    if (!entry || `${stateKey(entry.stateDir)}.json` !== name) {
      logger.warn?.({ record: join(registry, name) }, "state registry: ignoring an invalid record");
      continue;
    }
    if (
      await stat(entry.stateDir).then(
        () => true,
        (error: NodeJS.ErrnoException) => error.code !== "ENOENT",
      )
    ) {
      continue;
    }
    const settings: JailSettings = {
      stateDir: entry.stateDir,
      jailChrootBaseDir: entry.jailChrootBaseDir,
      jailParentCgroup: entry.jailParentCgroup,
    };
    // Only VMs this key's cgroups name: the record says where the chroot base is, the kernel's cgroups
    // say which jails in it were this directory's.
    const ids = await cgroupVmIds(jailLayout(settings).parentCgroup);
    const jails = await sweepStaleJails(settings, logger, ids);
    await removeJailParentCgroups(settings);
    const forgotten = jails.running.length === 0;
    if (forgotten) await rm(join(registry, name), { force: true });
    logger.info?.(
      { stateDir: entry.stateDir, removed: jails.removed, running: jails.running },
      "swept a deleted state directory",
    );
    swept.push({ stateDir: entry.stateDir, jails, forgotten });
  }
  return swept;
}

async function readEntry(path: string): Promise<z.infer<typeof registryEntrySchema> | undefined> {
  try {
    const text = await readFile(path, "utf8");
    if (text.length > 4096) return undefined;
    const parsed = registryEntrySchema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}
