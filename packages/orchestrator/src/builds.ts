// Immutable builds, the names that point at them, and the garbage collector that frees the rest.
//
// {stateDir}/builds/{id}/            build.json, vmstate, memory, memory.header, rootfs.ext4: never changed
// {stateDir}/builds/.staging-{id}/   a build being made; renamed into place whole, or removed by gc
// {stateDir}/templates/{name}.json   → a build id, replaced atomically by a rebuild
// {stateDir}/paused/{sandbox}.json   → a pause build, replaced atomically by the sandbox's next pause
import { createHash, randomBytes } from "node:crypto";
import { lstat, mkdir, open, readdir, readFile, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { sha256File, syncDirectory, writeJsonAtomic } from "@sbx/arch";
import { decodeMemoryHeader, type MemoryHeader, ownedRanges } from "@sbx/uffd";
import { z } from "zod";
import type { OrchestratorConfig } from "./config.ts";
import { OrchestratorError } from "./errors.ts";
import { StateDirectory } from "./state-dir.ts";
import {
  BUILD_FILES,
  type BuildManifest,
  buildIdSchema,
  buildManifestSchema,
  templateName,
} from "./template-manifest.ts";

type StateRoot = Pick<OrchestratorConfig, "stateDir">;

const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
let lastTime = 0;
let lastRandom = 0n;

/** A new ULID: ids made later sort later, also within one millisecond of this process. */
export function newBuildId(now = Date.now()): string {
  let random = BigInt(`0x${randomBytes(10).toString("hex")}`);
  if (now <= lastTime) {
    now = lastTime;
    random = lastRandom + 1n;
  }
  lastTime = now;
  lastRandom = random;
  let value = (BigInt(now) << 80n) | (random & ((1n << 80n) - 1n));
  let id = "";
  for (let i = 0; i < 26; i++) {
    id = (CROCKFORD[Number(value & 31n)] as string) + id;
    value >>= 5n;
  }
  return id;
}

export const buildsDir = (config: StateRoot): string => join(config.stateDir, "builds");
export const templatesDir = (config: StateRoot): string => join(config.stateDir, "templates");
export const pausedDir = (config: StateRoot): string => join(config.stateDir, "paused");

export function buildDir(config: StateRoot, id: string): string {
  return join(buildsDir(config), buildIdSchema.parse(id));
}

const STAGING_PREFIX = ".staging-";

/**
 * Builds in use by this process that no file names yet: a create between reading a pointer and writing
 * its record, a build being staged. gc skips them; `lease` returns the release.
 */
export class BuildLeases {
  readonly #counts = new Map<string, number>();

  lease(id: string): () => void {
    this.#counts.set(id, (this.#counts.get(id) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#counts.get(id) ?? 1) - 1;
      if (left === 0) this.#counts.delete(id);
      else this.#counts.set(id, left);
    };
  }

  has(id: string): boolean {
    return this.#counts.has(id);
  }

  get ids(): string[] {
    return [...this.#counts.keys()];
  }
}

/** A new, empty staging directory for build `id`. */
export async function stageBuild(config: StateRoot, id: string): Promise<string> {
  await mkdir(buildsDir(config), { recursive: true, mode: 0o700 });
  const staging = join(buildsDir(config), `${STAGING_PREFIX}${buildIdSchema.parse(id)}`);
  await mkdir(staging, { mode: 0o700 });
  return staging;
}

/**
 * The digest of a build's memory file: sha256 over the pages its header gives this build, in order,
 * never over holes. Those pages are all a restore reads from the file, so the digest stays the same
 * when a copy fills the holes, and a pause hashes what it wrote, not the guest's whole memory.
 */
export async function memoryDigest(path: string, header: MemoryHeader, build: string): Promise<string> {
  const hash = createHash("sha256");
  const handle = await open(path, "r");
  try {
    const chunk = Buffer.allocUnsafe(1024 * 1024);
    for (const range of ownedRanges(header, build)) {
      for (let done = 0; done < range.length; ) {
        const want = Math.min(chunk.length, range.length - done);
        const { bytesRead } = await handle.read(chunk, 0, want, range.offset + done);
        if (bytesRead === 0)
          throw new OrchestratorError("BUILD_INVALID", `${path} ends inside a page its header gives it`);
        hash.update(chunk.subarray(0, bytesRead));
        done += bytesRead;
      }
    }
  } finally {
    await handle.close();
  }
  return hash.digest("hex");
}

async function fileRecord(
  path: string,
  digest: (path: string) => Promise<string> = sha256File,
): Promise<{ sizeBytes: number; sha256: string }> {
  const handle = await open(path, "r");
  try {
    // Every file reaches the disk before build.json can name it.
    await handle.sync();
  } finally {
    await handle.close();
  }
  return { sizeBytes: (await stat(path)).size, sha256: await digest(path) };
}

/**
 * Seals a staged build: records size and sha256 of every file, writes build.json last, renames the
 * directory to `builds/{id}` and makes the rename durable. A crash before the rename leaves a staging
 * directory (gc removes it); after it, a complete build.
 */
export async function publishBuild(
  config: StateRoot,
  staging: string,
  manifest: Omit<BuildManifest, "files" | "schemaVersion">,
): Promise<BuildManifest> {
  const present = new Set(await readdir(staging));
  const record = async (name: string, digest?: (path: string) => Promise<string>) =>
    present.has(name) ? fileRecord(join(staging, name), digest) : undefined;
  const memoryHeader = present.has(BUILD_FILES.header)
    ? decodeMemoryHeader(await readFile(join(staging, BUILD_FILES.header)))
    : undefined;
  const [vmstate, memory, header, rootfs, cpuTemplate, workingSet] = await Promise.all([
    record(BUILD_FILES.vmstate),
    memoryHeader
      ? record(BUILD_FILES.memory, (path) => memoryDigest(path, memoryHeader, manifest.id))
      : undefined,
    record(BUILD_FILES.header),
    record(BUILD_FILES.rootfs),
    record(BUILD_FILES.cpuTemplate),
    record(BUILD_FILES.workingSet),
  ]);
  const parsed = buildManifestSchema.safeParse({
    schemaVersion: 1,
    ...manifest,
    files: {
      [BUILD_FILES.vmstate]: vmstate,
      [BUILD_FILES.memory]: memory,
      [BUILD_FILES.header]: header,
      ...(rootfs ? { [BUILD_FILES.rootfs]: rootfs } : {}),
      ...(cpuTemplate ? { [BUILD_FILES.cpuTemplate]: cpuTemplate } : {}),
      ...(workingSet ? { [BUILD_FILES.workingSet]: workingSet } : {}),
    },
  });
  if (!parsed.success)
    throw new OrchestratorError(
      "BUILD_INVALID",
      `build ${manifest.id} is incomplete: ${z.prettifyError(parsed.error)}`,
    );
  await writeJsonAtomic(join(staging, BUILD_FILES.manifest), parsed.data);
  await rename(staging, buildDir(config, manifest.id));
  await syncDirectory(buildsDir(config));
  return parsed.data;
}

export async function readBuild(config: StateRoot, id: string): Promise<BuildManifest> {
  if (!buildIdSchema.safeParse(id).success)
    throw new OrchestratorError("BUILD_INVALID", `${JSON.stringify(id)} is not a build id`);
  const path = join(buildDir(config, id), BUILD_FILES.manifest);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (cause) {
    throw new OrchestratorError("BUILD_NOT_FOUND", `build ${id} is not in ${buildsDir(config)}`, {
      cause,
      details: { build: id },
    });
  }
  let parsed: BuildManifest;
  try {
    parsed = buildManifestSchema.parse(JSON.parse(text));
  } catch (cause) {
    throw new OrchestratorError("BUILD_INVALID", `${path} is not a valid build record`, {
      cause,
      details: { build: id },
    });
  }
  if (parsed.id !== id)
    throw new OrchestratorError("BUILD_INVALID", `${path} describes build ${parsed.id}, not ${id}`);
  return parsed;
}

export async function readBuildHeader(config: StateRoot, id: string): Promise<MemoryHeader> {
  const bytes = await readFile(join(buildDir(config, id), BUILD_FILES.header)).catch((cause: unknown) => {
    throw new OrchestratorError("BUILD_NOT_FOUND", `build ${id} has no memory header`, {
      cause,
      details: { build: id },
    });
  });
  try {
    return decodeMemoryHeader(bytes);
  } catch (cause) {
    throw new OrchestratorError("BUILD_INVALID", `build ${id}'s memory header: ${(cause as Error).message}`, {
      cause,
      details: { build: id },
    });
  }
}

/**
 * The memory file of build `id` on this host, or BUILD_MISSING naming it: before anything starts, never a
 * guest served wrong pages (memorySourcesOf in store-sync.ts asks this for every local build of a header).
 */
export async function localMemoryFile(config: StateRoot, id: string): Promise<string> {
  const path = join(buildDir(config, id), BUILD_FILES.memory);
  try {
    const info = await lstat(path);
    if (!info.isFile()) throw new Error("not a regular file");
  } catch (cause) {
    throw new OrchestratorError(
      "BUILD_MISSING",
      `build ${id}, which holds pages of this snapshot, has no memory file at ${path}: it was removed or moved; the snapshot cannot be resumed`,
      { cause, details: { build: id } },
    );
  }
  return path;
}

const templatePointerSchema = z.object({
  schemaVersion: z.literal(1),
  name: templateName,
  build: buildIdSchema,
  updatedAt: z.iso.datetime(),
});
/** A template name and the build it points at (`templates/{name}.json`). */
export type TemplatePointer = z.infer<typeof templatePointerSchema>;

/** A paused sandbox: its name is the sandbox id; resume starts a sandbox from `build`. */
export const pausedSandboxSchema = z.object({
  schemaVersion: z.literal(2),
  id: z.string().regex(/^[a-z0-9]{1,32}$/),
  template: templateName,
  build: buildIdSchema,
  pausedAt: z.iso.datetime(),
});
/** A paused sandbox: its id and the build a resume starts from (`paused/{id}.json`). */
export type PausedSandbox = z.infer<typeof pausedSandboxSchema>;

async function readPointer<T>(path: string, schema: z.ZodType<T>, what: string): Promise<T | undefined> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  try {
    return schema.parse(JSON.parse(text));
  } catch (cause) {
    throw new OrchestratorError("STATE_RECORD_INVALID", `${path} is not a valid ${what}`, { cause });
  }
}

export async function setTemplatePointer(config: StateRoot, name: string, build: string): Promise<void> {
  await mkdir(templatesDir(config), { recursive: true, mode: 0o700 });
  const pointer = templatePointerSchema.parse({
    schemaVersion: 1,
    name,
    build,
    updatedAt: new Date().toISOString(),
  });
  await writeJsonAtomic(join(templatesDir(config), `${pointer.name}.json`), pointer);
}

export async function readTemplatePointer(config: StateRoot, name: string): Promise<TemplatePointer> {
  const parsedName = templateName.safeParse(name);
  const pointer = parsedName.success
    ? await readPointer(
        join(templatesDir(config), `${parsedName.data}.json`),
        templatePointerSchema,
        "template",
      )
    : undefined;
  if (!pointer)
    throw new OrchestratorError("TEMPLATE_NOT_FOUND", `no template "${name}" in ${templatesDir(config)}`, {
      details: { template: name },
    });
  return pointer;
}

export async function listTemplatePointers(config: StateRoot): Promise<TemplatePointer[]> {
  const names = await readdir(templatesDir(config)).catch(() => [] as string[]);
  const pointers: TemplatePointer[] = [];
  for (const file of names.sort()) {
    if (!file.endsWith(".json")) continue;
    const pointer = await readPointer(join(templatesDir(config), file), templatePointerSchema, "template");
    if (pointer) pointers.push(pointer);
  }
  return pointers;
}

/** Removes a template's name; its builds go at the next gc unless something else pins them. */
export async function removeTemplatePointer(config: StateRoot, name: string): Promise<void> {
  await readTemplatePointer(config, name);
  await rm(join(templatesDir(config), `${name}.json`));
  await syncDirectory(templatesDir(config));
}

export async function setPausedPointer(config: StateRoot, paused: PausedSandbox): Promise<void> {
  await mkdir(pausedDir(config), { recursive: true, mode: 0o700 });
  const parsed = pausedSandboxSchema.parse(paused);
  await writeJsonAtomic(join(pausedDir(config), `${parsed.id}.json`), parsed);
}

export async function listPausedSandboxes(config: StateRoot): Promise<PausedSandbox[]> {
  const names = await readdir(pausedDir(config)).catch(() => [] as string[]);
  const found: PausedSandbox[] = [];
  for (const file of names.sort()) {
    if (!file.endsWith(".json")) continue;
    const paused = await readPointer(join(pausedDir(config), file), pausedSandboxSchema, "paused sandbox");
    if (paused) found.push(paused);
  }
  return found;
}

export async function removePausedSandbox(config: StateRoot, id: string): Promise<void> {
  const path = join(pausedDir(config), `${id}.json`);
  if (
    !pausedSandboxSchema.shape.id.safeParse(id).success ||
    !(await readPointer(path, pausedSandboxSchema, "paused sandbox"))
  )
    throw new OrchestratorError("SANDBOX_NOT_FOUND", `no paused sandbox ${id}`, { details: { id } });
  await rm(path);
  await syncDirectory(pausedDir(config));
}

export interface GcReport {
  /** Builds removed, with the bytes they held on disk. */
  removed: { id: string; bytes: number }[];
  /** Staging directories and temp files a crash left. */
  leftovers: string[];
  bytesFreed: number;
  /** Builds kept, and why the first pin that holds each. */
  kept: { id: string; pinnedBy: string }[];
}

async function diskBytes(path: string): Promise<number> {
  const info = await lstat(path);
  if (!info.isDirectory()) return info.blocks * 512;
  let total = 0;
  for (const name of await readdir(path)) total += await diskBytes(join(path, name));
  return total;
}

/**
 * Removes every build nothing pins, and what crashes left. Pins: template pointers, paused sandboxes,
 * sandbox records (running sandboxes), `leases` (this process's creates and builds in flight), and,
 * from each pinned build, every build its memory header serves pages from and its parent. A pinned
 * build whose header cannot be read stops gc (GC_UNSAFE): it cannot tell what that build needs.
 */
export async function collectGarbage(config: StateRoot, leases?: BuildLeases): Promise<GcReport> {
  const pins = new Map<string, string>();
  const pin = (id: string, by: string) => {
    if (!pins.has(id)) pins.set(id, by);
  };
  for (const pointer of await listTemplatePointers(config)) pin(pointer.build, `template ${pointer.name}`);
  for (const paused of await listPausedSandboxes(config)) pin(paused.build, `paused sandbox ${paused.id}`);
  const { records } = await new StateDirectory(config.stateDir).listSandboxes();
  for (const record of records) if (record.build) pin(record.build, `sandbox ${record.id}`);
  for (const id of leases?.ids ?? []) pin(id, "in use by this process");

  const entries = await readdir(buildsDir(config)).catch(() => [] as string[]);
  const existing = new Set(entries.filter((name) => buildIdSchema.safeParse(name).success));
  const queue = [...pins.keys()];
  while (queue.length > 0) {
    const id = queue.pop() as string;
    if (!existing.has(id)) continue;
    let manifest: BuildManifest;
    let header: MemoryHeader;
    try {
      [manifest, header] = await Promise.all([readBuild(config, id), readBuildHeader(config, id)]);
    } catch (cause) {
      throw new OrchestratorError(
        "GC_UNSAFE",
        `build ${id} (${pins.get(id)}) cannot be read, so gc cannot tell which builds it needs: ${(cause as Error).message}`,
        { cause, details: { build: id } },
      );
    }
    for (const needed of [...header.builds, ...(manifest.parent ? [manifest.parent] : [])]) {
      if (!pins.has(needed)) {
        pins.set(needed, `build ${id}`);
        queue.push(needed);
      }
    }
  }

  const report: GcReport = { removed: [], leftovers: [], bytesFreed: 0, kept: [] };
  for (const name of entries.sort()) {
    const path = join(buildsDir(config), name);
    if (existing.has(name)) {
      const by = pins.get(name);
      if (by) {
        report.kept.push({ id: name, pinnedBy: by });
        continue;
      }
      const bytes = await diskBytes(path);
      await rm(path, { recursive: true, force: true });
      report.removed.push({ id: name, bytes });
      report.bytesFreed += bytes;
      continue;
    }
    const staged = name.startsWith(STAGING_PREFIX) ? name.slice(STAGING_PREFIX.length) : undefined;
    if (staged !== undefined && leases?.has(staged)) continue;
    const bytes = await diskBytes(path);
    await rm(path, { recursive: true, force: true });
    report.leftovers.push(path);
    report.bytesFreed += bytes;
  }
  for (const dir of [templatesDir(config), pausedDir(config)]) {
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      // This process's own temp files are writes in flight, not leftovers.
      if (!name.includes(".tmp-") || name.includes(`.tmp-${process.pid}-`)) continue;
      await rm(join(dir, name), { force: true });
      report.leftovers.push(join(dir, name));
    }
  }
  if (report.removed.length > 0 || report.leftovers.length > 0)
    await syncDirectory(buildsDir(config)).catch(() => undefined);
  return report;
}
