// The live receive path under fuzzing: a sender on a real Unix socketpair sends random payloads with
// random control messages (SCM_RIGHTS with 0 to 253 fds, one or several of them, credentials, other
// levels, garbage; whatever the kernel accepts reaches the receiver), and recvWithFds receives with
// random limits, with and without SO_PASSCRED. Every case ends with the receiver's fds closed (the ones
// it returned, by the test; any other, by recvWithFds): the process's fd count must not move at all.
import { closeSync, mkdtempSync, openSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { xorshift32 } from "@sbx/arch/testing";
import { DataType, type FieldType, load, open } from "ffi-rs";
import { describe, expect, it } from "vitest";
import { UffdError } from "./errors.ts";
import { libc, resolveLibcSymbols } from "./libc.ts";
import { SCM_RIGHTS, SOL_SOCKET } from "./linux.ts";
import { NativeMemory } from "./native-memory.ts";
import { recvWithFds } from "./scm-rights.ts";

// The sender's side and the socket setup, declared here: the package itself never sends fds.
const LIBRARY = "sbx-uffd-fuzz-libc";
open({ library: LIBRARY, path: "libc.so.6" });
const { I32, I64 } = DataType;
function call(funcName: string, paramsType: DataType[], values: number[]): { value: number; errno: number } {
  const result = load({
    library: LIBRARY,
    funcName,
    retType: I64,
    paramsType: paramsType as FieldType[],
    paramsValue: values,
    errno: true,
  }) as unknown as { value: number; errnoCode: number };
  return { value: result.value, errno: result.errnoCode };
}
const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SO_PASSCRED = 16;
const SCM_CREDENTIALS = 2;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;

const openFds = () => readdirSync("/proc/self/fd").length;

/** One cmsghdr (64-bit layout) with `payload`, padded to 8 bytes. */
function cmsg(level: number, type: number, payload: Buffer, lengthOverride?: number): Buffer {
  const padded = Buffer.alloc(16 + ((payload.length + 7) & ~7));
  padded.writeBigUInt64LE(BigInt(lengthOverride ?? 16 + payload.length), 0);
  padded.writeInt32LE(level, 8);
  padded.writeInt32LE(type, 12);
  payload.copy(padded, 16);
  return padded;
}

describe("recvWithFds on a live socket, fuzzed", () => {
  it("100,000 random messages: fds or a UffdError, and the fd count exactly unchanged", () => {
    resolveLibcSymbols();
    const dir = mkdtempSync(join(tmpdir(), "sbx-uffd-fuzz-"));
    const pool = [openSync("/dev/null", "r"), openSync(join(dir, "a"), "w"), openSync(dir, "r")];
    const pair = new NativeMemory(8);
    const scratch = new NativeMemory(1 << 20);
    const rand = xorshift32(0x5bd1e995);
    const stats = {
      sent: 0,
      refusedBySender: 0,
      received: 0,
      fdsReceived: 0,
      badControl: 0,
      nothingToRead: 0,
    };
    let sockets: [number, number] | undefined;
    const fresh = () => {
      if (sockets) for (const fd of sockets) libc.close(fd);
      const made = call(
        "socketpair",
        [I32, I32, I32, I64],
        [AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair.address],
      );
      expect(made.value).toBe(0);
      sockets = [pair.view.getInt32(0, true), pair.view.getInt32(4, true)];
      // The receiver never blocks: a message the sender could not send leaves nothing to wait for.
      const flags = libc.fcntl(sockets[1], 3 /* F_GETFL */, 0).value;
      libc.fcntl(sockets[1], 4 /* F_SETFL */, flags | SOCK_NONBLOCK);
    };
    let before = 0;
    try {
      fresh();
      before = openFds();
      for (let i = 0; i < 100_000; i++) {
        if (i % 5_000 === 0) fresh(); // a fresh pair now and then: state left by odd messages cannot pile up
        const [sender, receiver] = sockets as [number, number];
        const passcred = rand() % 4 === 0 ? 1 : 0;
        scratch.view.setInt32(0, passcred, true);
        call(
          "setsockopt",
          [I32, I32, I32, I64, I32],
          [receiver, SOL_SOCKET, SO_PASSCRED, scratch.address, 4],
        );

        const fdsOf = (count: number) => {
          const b = Buffer.alloc(4 * count);
          for (let k = 0; k < count; k++) b.writeInt32LE(pool[rand() % pool.length] as number, 4 * k);
          return b;
        };
        const parts: Buffer[] = [];
        const kinds = rand() % 8;
        for (let part = 0; part < (kinds === 0 ? 0 : 1 + (rand() % 3)); part++) {
          const choice = rand() % 10;
          if (choice < 5)
            parts.push(cmsg(SOL_SOCKET, SCM_RIGHTS, fdsOf(rand() % 10 === 0 ? rand() % 254 : rand() % 6)));
          else if (choice === 5) {
            const creds = Buffer.alloc(12);
            creds.writeInt32LE(rand() % 2 ? process.pid : rand() % 100_000, 0);
            creds.writeUInt32LE(rand() % 2 ? 0 : rand() % 70_000, 4);
            creds.writeUInt32LE(rand() % 2 ? 0 : rand() % 70_000, 8);
            parts.push(cmsg(SOL_SOCKET, SCM_CREDENTIALS, creds));
          } else if (choice === 6)
            parts.push(
              cmsg(
                rand() % 300,
                rand() % 8,
                Buffer.from(Array.from({ length: rand() % 24 }, () => rand() & 0xff)),
              ),
            );
          else if (choice === 7)
            parts.push(cmsg(SOL_SOCKET, SCM_RIGHTS, fdsOf(1 + (rand() % 3)), 16 + (rand() % 40)));
          else if (choice === 8)
            parts.push(Buffer.from(Array.from({ length: rand() % 40 }, () => rand() & 0xff)));
          else parts.push(cmsg(SOL_SOCKET, rand() % 6, fdsOf(rand() % 3)));
        }
        const control = Buffer.concat(parts);
        const payloadLength = rand() % 5 === 0 ? 0 : rand() % 3000;
        // msghdr at 0, iovec at 64, control at 128, payload after it.
        const controlAt = 128;
        const payloadAt = controlAt + control.length;
        scratch.bytes.fill(0, 0, 128);
        control.copy(scratch.bytes, controlAt);
        for (let b = 0; b < payloadLength; b++) scratch.bytes[payloadAt + b] = rand() & 0xff;
        scratch.setU64(64, scratch.address + payloadAt);
        scratch.setU64(72, payloadLength);
        scratch.setU64(16, scratch.address + 64);
        scratch.setU64(24, 1);
        if (control.length > 0) {
          scratch.setU64(32, scratch.address + controlAt);
          scratch.setU64(40, control.length);
        }
        const sent = call("sendmsg", [I32, I64, I32], [sender, scratch.address, MSG_DONTWAIT | MSG_NOSIGNAL]);
        if (sent.value < 0) stats.refusedBySender++;
        else stats.sent++;

        try {
          const message = recvWithFds(receiver, { maxFds: 1 + (rand() % 16), maxBytes: 1 + (rand() % 4096) });
          stats.received++;
          stats.fdsReceived += message.fds.length;
          for (const fd of message.fds) libc.close(fd);
        } catch (error) {
          expect(error).toBeInstanceOf(UffdError);
          const { code, errno } = error as UffdError;
          if (code === "BAD_CONTROL_MESSAGE") stats.badControl++;
          else {
            // The only other failure: the sender's message was refused, so there is nothing to read.
            expect([code, errno]).toEqual(["SYSCALL_FAILED", 11 /* EAGAIN */]);
            stats.nothingToRead++;
          }
        }
        // Whatever the receiver left (a payload longer than its limit) is read without control data:
        // the kernel drops any fds still attached.
        for (;;) {
          const got = libc.read(receiver, scratch.address, 1 << 16);
          if (got.value <= 0) break;
        }
        if (i % 1_000 === 999) expect(openFds(), `after case ${i}`).toBe(before);
      }
    } finally {
      if (sockets) for (const fd of sockets) libc.close(fd);
      for (const fd of pool) closeSync(fd);
      pair.free();
      scratch.free();
      rmSync(dir, { recursive: true, force: true });
    }
    console.log(`[uffd] live recvmsg fuzz: ${JSON.stringify(stats)}`);
    expect(stats.sent + stats.refusedBySender).toBe(100_000);
    // The corpus reaches the interesting paths: messages with fds, rejected ones, refused ones.
    expect(stats.fdsReceived).toBeGreaterThan(10_000);
    expect(stats.badControl).toBeGreaterThan(10_000);
    expect(stats.refusedBySender).toBeGreaterThan(1_000);
  });
});
