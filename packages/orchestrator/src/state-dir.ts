import { mkdir, open, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { writeJsonAtomic } from "@sbx/arch";
import { z } from "zod";
import { OrchestratorError } from "./errors.ts";
import { checkProcessIdentity, type ProcessIdentity, processIdentitySchema } from "./process-identity.ts";
import { sandboxIdSchema } from "./sandbox-id.ts";

const TEMP_MARKER = ".tmp-";

export const sandboxProcessRoleSchema = z.enum(["firecracker", "page-fault-server", "helper"]);
export type SandboxProcessRole = z.infer<typeof sandboxProcessRoleSchema>;

/** What a crashed orchestrator needs left behind to clean up after it: the per-sandbox record. */
export const sandboxRecordSchema = z.object({
  schemaVersion: z.literal(1),
  id: sandboxIdSchema,
  createdAt: z.iso.datetime(),
  state: z.enum(["creating", "running", "paused", "stopping"]),
  template: z.string().optional(),
  /** The orchestrator process that owns this sandbox. */
  owner: processIdentitySchema,
  processes: z.array(z.object({ role: sandboxProcessRoleSchema, identity: processIdentitySchema })),
  /** Unix sockets (Firecracker API, page-fault server) to remove. */
  sockets: z.array(z.string()),
  networkNamespace: z
    .object({ name: z.string(), hostVethName: z.string(), addressIndex: z.number().int().nonnegative() })
    .optional(),
  /** The build whose memory and disk this sandbox maps: pinned against gc while the record exists. */
  build: z.string().optional(),
  /**
   * Present when the VM runs under the jailer: its uid/gid (held while this record exists), the jail's
   * directory (`<chroot base>/<exec>/<id>`, holding the chroot) and its cgroups, removed by kill or reclaim.
   * Absent: the VM ran unjailed (SBX_UNJAILED).
   */
  jail: z
    .object({
      uid: z.number().int().min(1).max(0xfffffffe),
      gid: z.number().int().min(1).max(0xfffffffe),
      directory: z.string().min(1),
      cgroups: z.array(z.string().min(1)).default([]),
    })
    .optional(),
});
export type SandboxRecord = z.infer<typeof sandboxRecordSchema>;

export interface InvalidRecord {
  id: string;
  path: string;
  reason: string;
}

const lockSchema = z.object({ owner: processIdentitySchema, acquiredAt: z.string() });

/**
 * The orchestrator's state directory:
 *
 * ```
 * {root}/orchestrator.lock          the live orchestrator (pid, start time, cmdline)
 * {root}/sandboxes/{id}/sandbox.json SandboxRecord, rewritten atomically on every change
 * {root}/sandboxes/{id}/...         sockets, disk, snapshot layers of that sandbox
 * ```
 */
export class StateDirectory {
  readonly root: string;

  constructor(root: string) {
    this.root = root;
  }

  static async open(root: string): Promise<StateDirectory> {
    await mkdir(join(root, "sandboxes"), { recursive: true, mode: 0o700 });
    return new StateDirectory(root);
  }

  get sandboxesDir(): string {
    return join(this.root, "sandboxes");
  }

  sandboxDir(id: string): string {
    return join(this.sandboxesDir, sandboxIdSchema.parse(id));
  }

  recordPath(id: string): string {
    return join(this.sandboxDir(id), "sandbox.json");
  }

  /** Creates the sandbox's directory; fails if it exists, so two creates never share one. */
  async createSandboxDir(id: string): Promise<string> {
    const dir = this.sandboxDir(id);
    await mkdir(dir, { mode: 0o700 });
    return dir;
  }

  async writeRecord(record: SandboxRecord): Promise<void> {
    const parsed = sandboxRecordSchema.parse(record);
    await mkdir(this.sandboxDir(parsed.id), { recursive: true, mode: 0o700 });
    await writeJsonAtomic(this.recordPath(parsed.id), parsed);
  }

  async readRecord(id: string): Promise<SandboxRecord> {
    const path = this.recordPath(id);
    let text: string;
    try {
      text = await readFile(path, "utf8");
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code === "ENOENT") {
        throw new OrchestratorError("SANDBOX_NOT_FOUND", `no sandbox ${id} in ${this.sandboxesDir}`, {
          cause,
          details: { id },
        });
      }
      throw cause;
    }
    try {
      return sandboxRecordSchema.parse(JSON.parse(text));
    } catch (cause) {
      throw new OrchestratorError(
        "STATE_RECORD_INVALID",
        `${path} is not a valid sandbox record (${(cause as Error).message}); inspect it, stop what it names by hand and delete its directory`,
        { cause, details: { id, path } },
      );
    }
  }

  /** Every sandbox directory: valid records, and directories whose record is missing or unreadable. */
  async listSandboxes(): Promise<{ records: SandboxRecord[]; invalid: InvalidRecord[] }> {
    let entries: string[];
    try {
      entries = await readdir(this.sandboxesDir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return { records: [], invalid: [] };
      throw error;
    }
    const records: SandboxRecord[] = [];
    const invalid: InvalidRecord[] = [];
    for (const id of entries.sort()) {
      const path = join(this.sandboxesDir, id);
      if (!sandboxIdSchema.safeParse(id).success) {
        invalid.push({ id, path, reason: "not a sandbox id" });
        continue;
      }
      try {
        records.push(await this.readRecord(id));
      } catch (error) {
        invalid.push({ id, path, reason: (error as Error).message });
      }
    }
    return { records, invalid };
  }

  async removeSandbox(id: string): Promise<void> {
    await rm(this.sandboxDir(id), { recursive: true, force: true });
  }

  /** Temp files a crash left mid-write (`*.tmp-*`), in the root and every sandbox directory. */
  async removeTempFiles(): Promise<string[]> {
    const removed: string[] = [];
    const dirs = [this.root, ...(await readdir(this.sandboxesDir)).map((id) => join(this.sandboxesDir, id))];
    for (const dir of dirs) {
      let names: string[];
      try {
        names = await readdir(dir);
      } catch {
        continue;
      }
      for (const name of names) {
        if (!name.includes(TEMP_MARKER)) continue;
        await rm(join(dir, name), { force: true });
        removed.push(join(dir, name));
      }
    }
    return removed;
  }

  /**
   * Takes the directory for this process. A lock held by a live orchestrator is an error; a lock
   * left by a dead one (or a reused pid) is taken over. Release with `await using`.
   */
  async acquireLock(owner: ProcessIdentity): Promise<AsyncDisposable & { release(): Promise<void> }> {
    const path = join(this.root, "orchestrator.lock");
    const content = { owner, acquiredAt: new Date().toISOString() };
    try {
      const handle = await open(path, "wx", 0o600);
      try {
        await handle.writeFile(JSON.stringify(content));
        await handle.sync();
      } finally {
        await handle.close();
      }
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      const existing = lockSchema.safeParse(await readJson(path));
      if (existing.success) {
        const check = await checkProcessIdentity(existing.data.owner);
        if (check.same) {
          throw new OrchestratorError(
            "STATE_DIR_LOCKED",
            `${this.root} is in use by a running orchestrator (pid ${existing.data.owner.pid}: ${existing.data.owner.cmdline.join(" ")}); stop it or use another state directory`,
            { details: { owner: existing.data.owner } },
          );
        }
      }
      await writeJsonAtomic(path, content);
    }
    const release = async () => {
      const current = lockSchema.safeParse(await readJson(path));
      if (
        current.success &&
        current.data.owner.pid === owner.pid &&
        current.data.owner.startTime === owner.startTime
      ) {
        await rm(path, { force: true });
      }
    };
    return { release, [Symbol.asyncDispose]: release };
  }
}

async function readJson(path: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(path, "utf8"));
  } catch {
    return undefined;
  }
}
