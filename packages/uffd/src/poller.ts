// poll() over a few fds, through one native pollfd array: the worker's only way to wait.
import { check } from "./errors.ts";
import { libc } from "./libc.ts";
import { EINTR, POLLFD, POLLIN } from "./linux.ts";
import { NativeMemory } from "./native-memory.ts";

const MAX_FDS = 8;

export class Poller {
  readonly #fds = new NativeMemory(MAX_FDS * POLLFD.size);

  /** Waits up to `timeoutMs` (-1: forever) for any of `fds` to be readable; each one's revents. */
  poll(fds: readonly number[], timeoutMs: number): number[] {
    const block = this.#fds;
    fds.forEach((fd, i) => {
      block.view.setInt32(i * POLLFD.size + POLLFD.fd, fd, true);
      block.view.setInt16(i * POLLFD.size + POLLFD.events, POLLIN, true);
      block.view.setInt16(i * POLLFD.size + POLLFD.revents, 0, true);
    });
    for (;;) {
      const result = libc.poll(block.address, fds.length, timeoutMs);
      if (result.value === -1 && result.errno === EINTR) continue;
      check("poll", result);
      return fds.map((_, i) => block.view.getInt16(i * POLLFD.size + POLLFD.revents, true));
    }
  }

  free(): void {
    this.#fds.free();
  }
}
