// The userfaultfd calls the fault loop makes, on one fd: copy, zeropage, writeProtect, register, and
// reading events as a discriminated union, as userfaultfd-rs's `Event` does. The structs live in a
// native block of their own. The two hot calls (copy, zeropage) skip ffi-rs's errno, which costs a
// quarter of a call: the kernel writes -errno into the struct for most failures, and the rest are
// asked again with errno (safe: installing a page twice is EEXIST the second time).
import { check } from "./errors.ts";
import { libc, libcUnchecked } from "./libc.ts";
import {
  EAGAIN,
  EINTR,
  STRUCT_SIZE,
  UFFD_EVENT_PAGEFAULT,
  UFFD_EVENT_REMOVE,
  UFFD_MSG,
  UFFD_PAGEFAULT_FLAG_WP,
  UFFD_PAGEFAULT_FLAG_WRITE,
  UFFDIO_COPY,
  UFFDIO_COPY_FIELDS,
  UFFDIO_COPY_MODE_WP,
  UFFDIO_RANGE_FIELDS,
  UFFDIO_REGISTER,
  UFFDIO_REGISTER_FIELDS,
  UFFDIO_WRITEPROTECT,
  UFFDIO_WRITEPROTECT_FIELDS,
  UFFDIO_WRITEPROTECT_MODE_WP,
  UFFDIO_ZEROPAGE,
  UFFDIO_ZEROPAGE_FIELDS,
} from "./linux.ts";
import { NativeMemory } from "./native-memory.ts";

/** One message read from a userfaultfd. */
export type UffdEvent =
  /** A missing page (or, with `wp`, a write to a write-protected one) at `address`. */
  | { kind: "pagefault"; address: number; write: boolean; wp: boolean }
  /** The peer dropped [start, end) (MADV_DONTNEED, a balloon): those pages read as zeros from now on. */
  | { kind: "remove"; start: number; end: number }
  /** An event the fault loop does not ask for (fork, remap, unmap): ignored. */
  | { kind: "other"; event: number };

// Where each struct lives in the block; the event buffer follows.
const COPY = 0;
const ZERO = 64;
const WRITE_PROTECT = 128;
const REGISTER = 192;
const EVENTS = 256;

export class Userfaultfd {
  readonly fd: number;
  /** Where `read()` puts events; the native helper reads into the same buffer. */
  readonly eventsAddress: number;
  readonly maxEvents: number;
  readonly #block: NativeMemory;

  constructor(fd: number, maxEvents: number) {
    this.fd = fd;
    this.maxEvents = maxEvents;
    this.#block = new NativeMemory(EVENTS + maxEvents * STRUCT_SIZE.uffd_msg);
    this.eventsAddress = this.#block.address + EVENTS;
  }

  free(): void {
    this.#block.free();
  }

  #install(request: number, at: number, resultAt: number): number {
    this.#block.setU64(resultAt, 0);
    if (libcUnchecked.ioctl(this.fd, request, this.#block.address + at) === 0) return 0;
    const reported = this.#block.view.getInt32(resultAt, true);
    if (reported < 0) return -reported;
    const result = libc.ioctl(this.fd, request, this.#block.address + at);
    return result.value === 0 ? 0 : result.errno;
  }

  /** UFFDIO_COPY of `length` bytes from `source` to `destination`, write-protected if asked; 0 or the errno. */
  copy(destination: number, source: number, length: number, writeProtect: boolean): number {
    const block = this.#block;
    block.setU64(COPY + UFFDIO_COPY_FIELDS.dst, destination);
    block.setU64(COPY + UFFDIO_COPY_FIELDS.src, source);
    block.setU64(COPY + UFFDIO_COPY_FIELDS.len, length);
    block.setU64(COPY + UFFDIO_COPY_FIELDS.mode, writeProtect ? UFFDIO_COPY_MODE_WP : 0);
    return this.#install(UFFDIO_COPY, COPY, COPY + UFFDIO_COPY_FIELDS.copy);
  }

  /** UFFDIO_ZEROPAGE of [start, start + length); 0 or the errno. */
  zeropage(start: number, length: number): number {
    const block = this.#block;
    block.setU64(ZERO + UFFDIO_ZEROPAGE_FIELDS.range + UFFDIO_RANGE_FIELDS.start, start);
    block.setU64(ZERO + UFFDIO_ZEROPAGE_FIELDS.range + UFFDIO_RANGE_FIELDS.len, length);
    block.setU64(ZERO + UFFDIO_ZEROPAGE_FIELDS.mode, 0);
    return this.#install(UFFDIO_ZEROPAGE, ZERO, ZERO + UFFDIO_ZEROPAGE_FIELDS.zeropage);
  }

  /** Sets or (`protect` false) clears write protection, which also wakes a writer; 0 or the errno. */
  writeProtect(start: number, length: number, protect: boolean): number {
    const block = this.#block;
    block.setU64(WRITE_PROTECT + UFFDIO_WRITEPROTECT_FIELDS.range + UFFDIO_RANGE_FIELDS.start, start);
    block.setU64(WRITE_PROTECT + UFFDIO_WRITEPROTECT_FIELDS.range + UFFDIO_RANGE_FIELDS.len, length);
    block.setU64(WRITE_PROTECT + UFFDIO_WRITEPROTECT_FIELDS.mode, protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0);
    const result = libc.ioctl(this.fd, UFFDIO_WRITEPROTECT, block.address + WRITE_PROTECT);
    return result.value === 0 ? 0 : result.errno;
  }

  /** UFFDIO_REGISTER of [start, start + length) with `mode`; 0 or the errno. */
  register(start: number, length: number, mode: number): number {
    const block = this.#block;
    block.setU64(REGISTER + UFFDIO_REGISTER_FIELDS.range + UFFDIO_RANGE_FIELDS.start, start);
    block.setU64(REGISTER + UFFDIO_REGISTER_FIELDS.range + UFFDIO_RANGE_FIELDS.len, length);
    block.setU64(REGISTER + UFFDIO_REGISTER_FIELDS.mode, mode);
    block.setU64(REGISTER + UFFDIO_REGISTER_FIELDS.ioctls, 0);
    const result = libc.ioctl(this.fd, UFFDIO_REGISTER, block.address + REGISTER);
    return result.value === 0 ? 0 : result.errno;
  }

  /**
   * Reads what is pending into the event buffer; how many events (0: none). Checked, a failed read
   * other than EAGAIN or EINTR throws; unchecked (while spinning) any failure counts as none, and the
   * loop checks the read that follows its poll, so a real error still surfaces.
   */
  read(checked: boolean): number {
    let length: number;
    if (checked) {
      const result = libc.read(this.fd, this.eventsAddress, STRUCT_SIZE.uffd_msg * this.maxEvents);
      if (result.value < 0) {
        if (result.errno === EAGAIN || result.errno === EINTR) return 0;
        check("read(userfaultfd)", result);
      }
      length = result.value;
    } else {
      length = libcUnchecked.read(this.fd, this.eventsAddress, STRUCT_SIZE.uffd_msg * this.maxEvents);
      if (length < 0) return 0;
    }
    return Math.floor(length / STRUCT_SIZE.uffd_msg);
  }

  /** Event `index` of the buffer, as the last read (or the native helper) left it. */
  event(index: number): UffdEvent {
    const at = EVENTS + index * STRUCT_SIZE.uffd_msg;
    const block = this.#block;
    const event = block.view.getUint8(at + UFFD_MSG.event);
    if (event === UFFD_EVENT_PAGEFAULT) {
      const flags = block.view.getUint32(at + UFFD_MSG.pagefaultFlags, true);
      return {
        kind: "pagefault",
        address: block.u64(at + UFFD_MSG.pagefaultAddress),
        write: (flags & UFFD_PAGEFAULT_FLAG_WRITE) !== 0,
        wp: (flags & UFFD_PAGEFAULT_FLAG_WP) !== 0,
      };
    }
    if (event === UFFD_EVENT_REMOVE)
      return {
        kind: "remove",
        start: block.u64(at + UFFD_MSG.removeStart),
        end: block.u64(at + UFFD_MSG.removeEnd),
      };
    return { kind: "other", event };
  }
}
