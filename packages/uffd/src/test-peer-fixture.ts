// The setup most page-fault server tests share: the C test peer and the native helper built once per
// file (the helper removed after), and per test a temp directory with a memory file and a socket path,
// and a leak check that fails the test if it left an fd, userfaultfd, memfd or child process behind.
// The bindings below are live: a test reads them after the hooks set them.

import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach } from "vitest";
import { leakCheck } from "./test-counts.ts";
import { buildTestNativeHelper } from "./test-native-helper.ts";
import { buildTestPeer, spawnTestPeer, writeTestMemoryFile } from "./testing/peer.ts";

/** The test peer's binary (after beforeAll). */
export let peer = "";
/** This test's temp directory, its memory file and a socket path in it (after beforeEach). */
export let dir = "";
export let memoryFile = "";
export let socketPath = "";
/** The native helper for this file's tests, if gcc could build it (see faultLoops). */
export let nativeHelper: ReturnType<typeof buildTestNativeHelper> = { path: undefined, remove() {} };

/** Registers the hooks; `memorySize` bytes of test pattern go into `memoryFile` before each test. */
export function usePeerFixture(options: { prefix: string; memorySize?: number }): void {
  nativeHelper = buildTestNativeHelper();
  let checkLeaks: () => Promise<void>;
  beforeAll(async () => {
    peer = await buildTestPeer();
  });
  afterAll(() => nativeHelper.remove());
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), `sbx-uffd-${options.prefix}-`));
    memoryFile = join(dir, "mem");
    socketPath = join(dir, "uffd.sock");
    if (options.memorySize) writeTestMemoryFile(memoryFile, options.memorySize);
    checkLeaks = leakCheck();
  });
  afterEach(async () => {
    await checkLeaks();
    rmSync(dir, { recursive: true, force: true });
  });
}

/**
 * Runs `body` while a test peer holds a handshaken connection without touching memory, its guest memory
 * a memfd it sends along (so the test can read what the server installed), then kills it.
 */
export async function withHoldingPeer<T>(
  options: { socketPath: string; size: number },
  body: (child: ChildProcess) => Promise<T>,
): Promise<T> {
  const child = spawnTestPeer({
    binary: peer,
    socketPath: options.socketPath,
    memoryFile,
    size: options.size,
    mode: "none",
    holdMs: 60_000,
    backing: "memfd",
    fds: 2,
  });
  try {
    return await body(child);
  } finally {
    child.kill("SIGKILL");
    await new Promise((resolve) => child.once("close", resolve));
  }
}
