// `@sbx/arch/native`: the libc calls of every sbx package, declared once through ffi-rs (an optional peer
// dependency, so `@sbx/arch`'s main entry needs nothing but zod). Each function keeps one reusable
// parameter object (ffi-rs builds its call description from it; reusing it is ~2.4x cheaper than
// `define()`), and reads errno right after the call. Pointers and sizes travel as I64: user-space
// addresses fit a JS number exactly. The numbers the calls take (ioctl requests, flags) stay with the
// package that uses them, beside the kernel headers they come from.
import { createExternalBuffer, DataType, type FieldType, load, open } from "ffi-rs";

const LIBRARY = "sbx-libc";

// Opened when the module loads, not on first use: ffi-rs keeps its libraries in one process-wide map
// without a lock, and @sbx/uffd's fault workers look theirs up in it from other threads. A first open
// during a restore (the orchestrator fingerprints the host on every create) would insert into that map
// while a worker reads it. Where there is no libc.so.6 (macOS, musl) importing still works; the first
// call then throws ffi-rs's error.
const openLibc = () => open({ library: LIBRARY, path: "libc.so.6" });
let opened = (() => {
  try {
    openLibc();
    return true;
  } catch {
    return false;
  }
})();

function ensureOpen(): void {
  if (opened) return;
  openLibc();
  opened = true;
}

/** A libc call's return value and the errno read right after it (meaningful when the value says failure). */
export interface CallResult {
  value: number;
  errno: number;
}

type Declared = (...args: number[]) => CallResult;

/** ffi-rs's description of a call, built once and reused: only `paramsValue` changes per call. */
function callParams(funcName: string, retType: DataType, paramsType: DataType[]) {
  return {
    library: LIBRARY,
    funcName,
    retType,
    paramsType: paramsType as FieldType[],
    paramsValue: new Array<number>(paramsType.length).fill(0),
  };
}

function declare(funcName: string, retType: DataType, paramsType: DataType[]): Declared {
  const params = { ...callParams(funcName, retType, paramsType), errno: true as const };
  return (...args: number[]) => {
    ensureOpen();
    for (let i = 0; i < args.length; i++) params.paramsValue[i] = args[i] as number;
    const result = load(params) as unknown as { value: number; errnoCode: number };
    return { value: result.value, errno: result.errnoCode };
  };
}

/**
 * The same call without errno: ffi-rs formats an errno message on every call that asks for errno
 * (~1.3 µs here, a quarter of the call). Only for the fault loop's hot calls, whose callers find the
 * errno another way when the call fails (the kernel's own report in the struct, or a checked retry).
 */
function declareUnchecked(funcName: string, retType: DataType, paramsType: DataType[]) {
  const params = callParams(funcName, retType, paramsType);
  return (a: number, b: number, c: number): number => {
    ensureOpen();
    params.paramsValue[0] = a;
    params.paramsValue[1] = b;
    params.paramsValue[2] = c;
    return load(params) as unknown as number;
  };
}

const { I32, I64 } = DataType;

/** `read` and `ioctl` returning only the value (-1 on failure); see declareUnchecked. */
export const libcUnchecked = {
  read: declareUnchecked("read", I64, [I32, I64, I64]),
  ioctl: declareUnchecked("ioctl", I32, [I32, I64, I64]),
};

/** libc's socket, file, memory and syscall functions, each returning `{ value, errno }`. */
// <sys/socket.h>, <unistd.h>, <poll.h>, <sys/ioctl.h>, <sys/mman.h>, <fcntl.h>, <sys/eventfd.h>
export const libc = {
  socket: declare("socket", I32, [I32, I32, I32]),
  bind: declare("bind", I32, [I32, I64, I32]),
  listen: declare("listen", I32, [I32, I32]),
  accept4: declare("accept4", I32, [I32, I64, I64, I32]),
  recvmsg: declare("recvmsg", I64, [I32, I64, I32]),
  getsockopt: declare("getsockopt", I32, [I32, I32, I32, I64, I64]),
  close: declare("close", I32, [I32]),
  poll: declare("poll", I32, [I64, I64, I32]),
  read: declare("read", I64, [I32, I64, I64]),
  write: declare("write", I64, [I32, I64, I64]),
  pread: declare("pread", I64, [I32, I64, I64, I64]),
  pwrite: declare("pwrite", I64, [I32, I64, I64, I64]),
  ioctl: declare("ioctl", I32, [I32, I64, I64]),
  mmap: declare("mmap", I64, [I64, I64, I32, I32, I32, I64]),
  munmap: declare("munmap", I32, [I64, I64]),
  madvise: declare("madvise", I32, [I64, I64, I32]),
  ftruncate: declare("ftruncate", I32, [I32, I64]),
  copyFileRange: declare("copy_file_range", I64, [I32, I64, I32, I64, I64, I32]),
  fcntl: declare("fcntl", I32, [I32, I32, I32]),
  lseek: declare("lseek", I64, [I32, I64, I32]),
  eventfd: declare("eventfd", I32, [I32, I32]),
  syscall3: declare("syscall", I64, [I64, I64, I64, I64]),
  syscall4: declare("syscall", I64, [I64, I64, I64, I64, I64]),
};

const pointerParams = {
  library: LIBRARY,
  funcName: "memset",
  retType: DataType.External,
  paramsType: [I64, I32, I64] as FieldType[],
  paramsValue: [0, 0, 0] as number[],
};

let symbolsResolved = false;

/**
 * Calls every function above once with arguments that make it fail at once or do nothing (fd -1, zero
 * lengths, syscall -1). ffi-rs resolves a symbol on its first call and stores it in one process-wide
 * map without a lock, so a first call on one thread while another thread looks a symbol up is a data
 * race. Call this on the main thread before starting threads that make libc calls (the page-fault
 * server does, before its fault worker); after it, every thread only reads the map. Once per process.
 */
export function resolveLibcSymbols(): void {
  if (symbolsResolved) return;
  const harmless: Record<keyof typeof libc, number[]> = {
    socket: [-1, 0, 0],
    bind: [-1, 0, 0],
    listen: [-1, 0],
    accept4: [-1, 0, 0, 0],
    recvmsg: [-1, 0, 0],
    getsockopt: [-1, 0, 0, 0, 0],
    close: [-1],
    poll: [0, 0, 0],
    read: [-1, 0, 0],
    write: [-1, 0, 0],
    pread: [-1, 0, 0, 0],
    pwrite: [-1, 0, 0, 0],
    ioctl: [-1, 0, 0],
    mmap: [0, 0, 0, 0, -1, 0],
    munmap: [0, 0],
    madvise: [0, 0, 0],
    ftruncate: [-1, 0],
    copyFileRange: [-1, 0, -1, 0, 0, 0],
    fcntl: [-1, 0, 0],
    lseek: [-1, 0, 0],
    eventfd: [0, -1],
    syscall3: [-1, 0, 0, 0],
    syscall4: [-1, 0, 0, 0, 0],
  };
  for (const [name, args] of Object.entries(harmless)) libc[name as keyof typeof libc](...args);
  libcUnchecked.read(-1, 0, 0);
  libcUnchecked.ioctl(-1, 0, 0);
  ensureOpen();
  pointerParams.paramsValue[0] = 0;
  load(pointerParams as never); // memset(NULL, 0, 0): touches nothing
  symbolsResolved = true;
}

/** A Buffer over native memory at `address` (no copy); the caller keeps the memory alive. */
export function nativeView(address: number, length: number): Buffer {
  ensureOpen();
  pointerParams.paramsValue[0] = address;
  // memset(ptr, 0, 0) returns ptr: the cheapest way to turn an address into a pointer ffi-rs can wrap.
  const external = load(pointerParams as never) as never;
  return createExternalBuffer(external, length);
}

/**
 * The address of `bytes`' memory, for native code that writes into it (ffi-rs passes a Uint8Array's
 * own memory, uncopied; memset(p, 0, 0) returns p). Only for memory that never moves: a
 * SharedArrayBuffer's, which the caller keeps alive while native code may write.
 */
export function addressOf(bytes: Uint8Array): number {
  if (!(bytes.buffer instanceof SharedArrayBuffer))
    throw new TypeError("addressOf: only a SharedArrayBuffer's memory stays where it is");
  ensureOpen();
  return load({
    library: LIBRARY,
    funcName: "memset",
    retType: I64,
    paramsType: [DataType.U8Array, I32, I64],
    paramsValue: [bytes as never, 0, 0],
  }) as unknown as number;
}
