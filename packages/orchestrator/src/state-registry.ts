// Which state directory each group of jail cgroups belongs to. A jailed VM's cgroups live under
// `{jailParentCgroup}/{state key}/{id}`, and the key is a hash of the state directory's path, which
// cannot be turned back into the path. So every start records the way back here, and a clean close
// removes the record. When a state directory is deleted after a crash, this record is the only way to
// find its cgroups and any chroots kept outside it. /run is a tmpfs: the record goes at reboot, like
// the cgroups it describes.
import { mkdir, readdir, readFile, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { type Logger, silentLogger, writeFileAtomic } from "@sbx/arch";
import { type RemovedJails, readCgroupMounts, removeCgroupDirs } from "@sbx/fc-client";
import { z } from "zod";
import { absolutePath, jailParentCgroupSchema, type OrchestratorConfig } from "./config.ts";
import { jailLayout, removeJailParentCgroups, stateKey } from "./jail-plan.ts";

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
  for (const name of names.filter((n) => /^[0-9a-f]{12}\.json$/.test(n))) {
    const entry = await readEntry(join(registry, name));
    // A record whose name is not its own path's key was not written by registerStateDirectory.
    if (!entry || `${stateKey(entry.stateDir)}.json` !== name) {
      logger.warn?.({ record: join(registry, name) }, "state registry: ignoring an invalid record");
      continue;
    }
    if (stateKey(entry.stateDir) === stateKey(config.stateDir)) continue;
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
    const jails = await removeIdleJails(settings);
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

const VM_ID = /^[A-Za-z0-9-]{1,64}$/;

async function hasTasks(cgroupDir: string): Promise<boolean> {
  const procs = await readFile(join(cgroupDir, "cgroup.procs"), "utf8").catch(() => "");
  return procs.trim() !== "";
}

/**
 * The VMs of one state key: those whose cgroups hold no process lose their cgroups and their chroot.
 * Only ids this key's cgroups name are touched, and in a chroot base only `{base}/{exec}/{id}`: the
 * record says where the base is, the kernel's cgroups say which ids were this directory's.
 */
async function removeIdleJails(settings: JailSettings): Promise<RemovedJails> {
  const layout = jailLayout(settings);
  const groups = (await readCgroupMounts().catch(() => [])).map((mount) =>
    join(mount.path, layout.parentCgroup),
  );
  const ids = new Set<string>();
  for (const group of groups) {
    for (const child of await readdir(group, { withFileTypes: true }).catch(() => [])) {
      if (child.isDirectory() && VM_ID.test(child.name)) ids.add(child.name);
    }
  }
  const result: RemovedJails = { removed: [], running: [], leftCgroups: [] };
  for (const id of [...ids].sort()) {
    const dirs = groups.map((group) => join(group, id));
    if ((await Promise.all(dirs.map(hasTasks))).some(Boolean)) {
      result.running.push(id);
      continue;
    }
    result.leftCgroups.push(...(await removeCgroupDirs(dirs)));
    if (settings.jailChrootBaseDir) {
      for (const exec of await readdir(settings.jailChrootBaseDir).catch(() => [] as string[])) {
        await rm(join(settings.jailChrootBaseDir, exec, id), { recursive: true, force: true });
      }
    }
    result.removed.push(id);
  }
  return result;
}
