import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Logger } from "@sbx/arch";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { PageFaultServer } from "./server.ts";
import { leakCheck } from "./test-counts.ts";
import { buildTestPeer, runTestPeer, writeTestMemoryFile } from "./testing/peer.ts";

const SIZE = 1024 * 1024;
let peer: string;
let dir: string;
let checkLeaks: () => Promise<void>;

beforeAll(async () => {
  peer = await buildTestPeer();
});
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "sbx-uffd-logger-"));
  checkLeaks = leakCheck();
});
afterEach(async () => {
  await checkLeaks();
  rmSync(dir, { recursive: true, force: true });
});

describe("the page-fault server's logger is @sbx/arch's (every method optional)", () => {
  it("works with a logger that has only warn, and warns through it when the peer leaves", async () => {
    const memoryFile = join(dir, "mem");
    const socketPath = join(dir, "uffd.sock");
    writeTestMemoryFile(memoryFile, SIZE);
    const warnings: string[] = [];
    const logger: Logger = { warn: (_fields, message) => warnings.push(message) };
    await using server = new PageFaultServer({ socketPath, memoryFile, nativeHelper: "off", logger });
    await server.listen();
    const result = await runTestPeer({ binary: peer, socketPath, memoryFile, size: SIZE });
    expect(result.mismatches).toBe(0);
    const stop = await server.stopped;
    expect(stop.reason).toBe("peer-exited");
    expect(warnings.some((message) => message.includes("page-fault server stopped"))).toBe(true);
  });

  it("works with an empty logger", async () => {
    const memoryFile = join(dir, "mem");
    writeTestMemoryFile(memoryFile, SIZE);
    await using server = new PageFaultServer({
      socketPath: join(dir, "uffd.sock"),
      memoryFile,
      nativeHelper: "off",
      logger: {},
    });
    await server.listen();
    expect((await server.close()).reason).toBe("closed");
  });
});
