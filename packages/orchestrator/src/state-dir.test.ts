import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { processIdentity } from "./process-identity.ts";
import { type SandboxRecord, StateDirectory } from "./state-dir.ts";

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "sbx-state-"));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

async function record(id: string): Promise<SandboxRecord> {
  return {
    schemaVersion: 1,
    id,
    createdAt: new Date().toISOString(),
    state: "running",
    owner: (await processIdentity(process.pid))!,
    processes: [],
    sockets: [join(root, "sandboxes", id, "api.sock")],
  };
}

describe("StateDirectory", () => {
  it("writes, reads and lists sandbox records, and reports broken ones", async () => {
    const state = await StateDirectory.open(root);
    await state.writeRecord(await record("aaa111"));
    await state.writeRecord({ ...(await record("bbb222")), state: "paused" });
    await state.createSandboxDir("ccc333");
    await writeFile(state.recordPath("ccc333"), "{ half a reco");
    const { records, invalid } = await state.listSandboxes();
    expect(records.map((r) => [r.id, r.state])).toEqual([
      ["aaa111", "running"],
      ["bbb222", "paused"],
    ]);
    expect(invalid).toEqual([
      expect.objectContaining({ id: "ccc333", reason: expect.stringMatching(/not a valid/) }),
    ]);
    await expect(state.readRecord("zzz")).rejects.toMatchObject({ code: "SANDBOX_NOT_FOUND" });
    await expect(state.createSandboxDir("aaa111")).rejects.toThrow(/EEXIST/);
    await state.removeSandbox("aaa111");
    expect((await state.listSandboxes()).records.map((r) => r.id)).toEqual(["bbb222"]);
  });

  it("refuses records and ids that could escape the directory", async () => {
    const state = await StateDirectory.open(root);
    expect(() => state.sandboxDir("../etc")).toThrow(/sandbox id|Invalid/i);
    await expect(state.writeRecord({ ...(await record("ok1")), id: "../x" })).rejects.toMatchObject({
      name: "ZodError",
    });
  });

  it("locks the directory against a second live orchestrator and takes over a dead one's lock", async () => {
    const state = await StateDirectory.open(root);
    const self = (await processIdentity(process.pid))!;
    const lock = await state.acquireLock(self);
    await expect(state.acquireLock(self)).rejects.toMatchObject({ code: "STATE_DIR_LOCKED" });
    await lock.release();
    await writeFile(
      join(root, "orchestrator.lock"),
      JSON.stringify({ owner: { ...self, startTime: "1" }, acquiredAt: "then" }),
    );
    {
      await using _lock = await state.acquireLock(self);
      expect(JSON.parse(await readFile(join(root, "orchestrator.lock"), "utf8")).owner).toEqual(self);
    }
    expect(await readdir(root)).toEqual(["sandboxes"]);
  });
});
