import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { COPY_BELOW_BYTES, SLAB_BYTES, slabReaderOf } from "./slab-reader.ts";
import { openFds } from "./test-counts.ts";
import { settle } from "./testing/namespaced-agent.ts";
import { unixSocketTransport } from "./transport.ts";

let dir: string;
let server: Server | undefined;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "sbx-agent-slab-"));
});
afterEach(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
  rmSync(dir, { recursive: true, force: true });
});

/** A Unix socket server that runs `serve` on its one connection; the client comes from the transport. */
async function connected(serve: (peer: Socket) => void): Promise<Socket> {
  const path = join(dir, "s.sock");
  server = createServer((peer) => {
    peer.on("error", () => {});
    serve(peer);
  });
  await new Promise<void>((resolve) => server?.listen(path, resolve));
  return await unixSocketTransport({ path }).connect();
}

/** Bytes that differ at every offset (mod 251), so a region read into twice shows. */
function pattern(length: number, start = 0): Buffer {
  const bytes = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) bytes[i] = (start + i) % 251;
  return bytes;
}

describe("SlabReader", () => {
  it("hands out chunks that are never read into again, large and small, in order", async () => {
    const fds = openFds();
    // Several slabs' worth in bursts, then small writes that arrive one by one.
    const bulk = pattern(3 * SLAB_BYTES + 12_345);
    const smalls = Array.from({ length: 20 }, (_, i) => pattern(100 + i, i));
    const socket = await connected(async (peer) => {
      peer.write(bulk);
      for (const small of smalls) {
        await new Promise((resolve) => setTimeout(resolve, 2));
        peer.write(small);
      }
      peer.end();
    });
    const kept: Buffer[] = [];
    const snapshots: Buffer[] = [];
    await new Promise<void>((resolve) => {
      socket.once("close", () => resolve());
      slabReaderOf(socket)?.take((chunk) => {
        kept.push(chunk);
        snapshots.push(Buffer.from(chunk));
      });
    });
    const expected = Buffer.concat([bulk, ...smalls]);
    expect(Buffer.concat(kept).equals(expected)).toBe(true);
    // Every chunk still holds what it held when delivered: no later read overwrote it.
    expect(kept.filter((chunk, i) => !chunk.equals(snapshots[i] as Buffer))).toEqual([]);
    expect(kept.every((chunk) => chunk.length <= SLAB_BYTES)).toBe(true);
    // A short read is a copy of its own size, so keeping it does not keep a slab alive.
    for (const chunk of kept.filter((c) => c.length < COPY_BELOW_BYTES)) {
      expect(chunk.buffer.byteLength).toBeLessThan(SLAB_BYTES);
    }
    await new Promise<void>((resolve) => server?.close(() => resolve()));
    server = undefined;
    expect(
      await settle(
        () => openFds(),
        (n) => n <= fds,
      ),
    ).toBeLessThanOrEqual(fds);
  });

  it("keeps what arrives before a take (and what is put back in front), and destroys a socket nobody reads", async () => {
    const socket = await connected((peer) => peer.write("hello"));
    const reader = slabReaderOf(socket);
    if (!reader) throw new Error("the unix transport reads through a SlabReader");
    await settle(
      () => socket.bytesRead,
      (n) => n >= 5,
    );
    reader.unshift(Buffer.from(">"));
    const chunks: string[] = [];
    reader.take((chunk) => chunks.push(chunk.toString()));
    expect(chunks.join("")).toBe(">hello");
    socket.destroy();
    await new Promise<void>((resolve) => server?.close(() => resolve()));

    // Nobody takes the bytes: past the bound the socket is destroyed instead of growing memory.
    const flooded = await connected((peer) => peer.write(Buffer.alloc(4 * SLAB_BYTES)));
    await settle(
      () => flooded.destroyed,
      (destroyed) => destroyed,
    );
    expect(flooded.destroyed).toBe(true);
  });
});
