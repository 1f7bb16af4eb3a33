// SCM_RIGHTS: file descriptors passed over a Unix socket. The parser is pure; `recvWithFds` owns the
// syscall and closes every fd it received whenever it fails, and never any other fd.
import { check, UffdError } from "./errors.ts";
import { libc } from "./libc.ts";
import { MSG_CMSG_CLOEXEC, MSG_CTRUNC, SCM_RIGHTS, SOL_SOCKET } from "./linux.ts";
import { NativeMemory } from "./native-memory.ts";

const CMSG_HEADER = 16; // struct cmsghdr on 64-bit: size_t cmsg_len; int cmsg_level; int cmsg_type
const align8 = (n: number) => (n + 7) & ~7;

/**
 * The fds in a control buffer (64-bit cmsghdr layout). Anything but a clean chain of SOL_SOCKET /
 * SCM_RIGHTS messages throws BAD_CONTROL_MESSAGE; the error's `receivedFds` lists the fds of every
 * well-formed SCM_RIGHTS message in the buffer, which the kernel did install and the caller must close.
 * A message of another kind does not stop that count: the kernel puts SCM_CREDENTIALS (SO_PASSCRED)
 * before the fds, so stopping there would leak them. Only a header that cannot be read ends it.
 */
export function parseScmRights(control: Uint8Array, msgFlags = 0): number[] {
  const fds: number[] = [];
  let rejected: string | undefined;
  const fail = (reason: string): never => {
    const error = new UffdError("BAD_CONTROL_MESSAGE", `control message rejected: ${rejected ?? reason}`);
    Object.defineProperty(error, "receivedFds", { value: [...fds], enumerable: true });
    throw error;
  };
  const view = new DataView(control.buffer, control.byteOffset, control.byteLength);
  let offset = 0;
  while (offset < control.byteLength) {
    if (control.byteLength - offset < CMSG_HEADER) fail(`truncated header at byte ${offset}`);
    const length = Number(view.getBigUint64(offset, true));
    const level = view.getInt32(offset + 8, true);
    const type = view.getInt32(offset + 12, true);
    if (length < CMSG_HEADER) fail(`cmsg_len ${length} is shorter than its header`);
    if (length > control.byteLength - offset) fail(`cmsg_len ${length} runs past the buffer`);
    if (level !== SOL_SOCKET || type !== SCM_RIGHTS) rejected ??= `unexpected level ${level} / type ${type}`;
    else {
      if ((length - CMSG_HEADER) % 4 !== 0) fail(`SCM_RIGHTS payload of ${length - CMSG_HEADER} bytes`);
      for (let at = offset + CMSG_HEADER; at < offset + length; at += 4) {
        const fd = view.getInt32(at, true);
        if (fd < 0) fail(`negative fd ${fd}`);
        fds.push(fd);
      }
    }
    offset += Math.min(align8(length), control.byteLength - offset);
  }
  if (rejected !== undefined) fail(rejected);
  if (msgFlags & MSG_CTRUNC) fail("MSG_CTRUNC: the sender passed more fds than fit");
  return fds;
}

/** The fds an error says were received (set by parseScmRights and recvWithFds). */
export function receivedFdsOf(error: unknown): number[] {
  return ((error as { receivedFds?: number[] } | undefined)?.receivedFds ?? []).slice();
}

/** What one recvmsg brought: the bytes, and the fds, now the caller's. */
export interface ReceivedMessage {
  data: Buffer;
  fds: number[];
}

const MSGHDR = 56;
const IOVEC = 16;

/**
 * One `recvmsg` with MSG_CMSG_CLOEXEC: the bytes and the fds. Every received fd is closed when
 * anything about the message is wrong; on success the caller owns them.
 */
export function recvWithFds(
  socketFd: number,
  options: { maxFds?: number; maxBytes?: number } = {},
): ReceivedMessage {
  const maxFds = options.maxFds ?? 4;
  const maxBytes = options.maxBytes ?? 64 * 1024;
  const controlLength = align8(CMSG_HEADER + 4 * maxFds);
  const memory = new NativeMemory(MSGHDR + IOVEC + controlLength + maxBytes);
  try {
    const iov = memory.address + MSGHDR;
    const control = iov + IOVEC;
    const data = control + controlLength;
    memory.setU64(MSGHDR, data); // iov_base
    memory.setU64(MSGHDR + 8, maxBytes); // iov_len
    memory.setU64(16, iov); // msg_iov
    memory.setU64(24, 1); // msg_iovlen
    memory.setU64(32, control); // msg_control
    memory.setU64(40, controlLength); // msg_controllen
    const received = check("recvmsg", libc.recvmsg(socketFd, memory.address, MSG_CMSG_CLOEXEC));
    const usedControl = Math.min(memory.u64(40), controlLength);
    const flags = memory.view.getInt32(48, true);
    const controlStart = MSGHDR + IOVEC;
    let fds: number[];
    try {
      fds = parseScmRights(memory.bytes.subarray(controlStart, controlStart + usedControl), flags);
    } catch (error) {
      for (const fd of receivedFdsOf(error)) libc.close(fd);
      throw error;
    }
    const dataStart = controlStart + controlLength;
    return { data: Buffer.from(memory.bytes.subarray(dataStart, dataStart + received)), fds };
  } finally {
    memory.free();
  }
}
