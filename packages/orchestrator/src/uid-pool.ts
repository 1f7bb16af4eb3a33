// Each jailed VM runs as a uid (and the same gid) of its own, so one guest's Firecracker can neither
// signal, ptrace nor read the files of another. A uid is held by a sandbox's record for as long as the
// record exists (reserved again when the state directory is reopened) and by in-memory leases for VMs
// that have no record (template builds): it is never handed out twice at once.
import { readdir, readFile } from "node:fs/promises";
import { OrchestratorError } from "./errors.ts";

export interface UidRange {
  from: number;
  to: number;
}

/** `200000-299999` → `{ from: 200000, to: 299999 }` (the config has validated it). */
export function parseUidRange(text: string): UidRange {
  const [from, to] = text.split("-").map(Number) as [number, number];
  if (!Number.isInteger(from) || !Number.isInteger(to) || from < 1 || to > 0xfffffffe || from > to) {
    throw new OrchestratorError(
      "INVALID_OPTIONS",
      `uid range "${text}" must be from-to within 1-4294967294, e.g. 200000-299999`,
      { details: { range: text } },
    );
  }
  return { from, to };
}

export class UidPool {
  readonly range: UidRange;
  readonly #used = new Set<number>();
  #next: number;

  constructor(range: UidRange) {
    this.range = range;
    this.#next = range.from;
  }

  get inUse(): number {
    return this.#used.size;
  }

  get capacity(): number {
    return this.range.to - this.range.from + 1;
  }

  has(uid: number): boolean {
    return this.#used.has(uid);
  }

  /**
   * A free uid (not held here, and not in `busy`: see {@link uidsInUse}), taken round-robin from the last one handed out: a uid that was just released is the
   * last to come back, so a process of the VM before (were one to survive) meets no new guest.
   */
  allocate(busy: ReadonlySet<number> = new Set()): number {
    const size = this.capacity;
    for (let step = 0; step < size; step++) {
      const uid = this.range.from + ((this.#next - this.range.from + step) % size);
      if (!this.#used.has(uid) && !busy.has(uid)) {
        this.#used.add(uid);
        this.#next = uid === this.range.to ? this.range.from : uid + 1;
        return uid;
      }
    }
    throw new OrchestratorError(
      "CAPACITY_EXCEEDED",
      `all ${size} jail uids of ${this.range.from}-${this.range.to} are in use; widen jailUidRange (SBX_JAIL_UID_RANGE)`,
      { details: { reason: "jail-uids", range: this.range } },
    );
  }

  /** Marks a uid a record holds as taken; one outside the range (a range changed since) is kept out too. */
  reserve(uid: number): void {
    if (this.#used.has(uid)) {
      throw new OrchestratorError("STATE_RECORD_INVALID", `jail uid ${uid} is held by two sandbox records`, {
        details: { uid },
      });
    }
    this.#used.add(uid);
  }

  release(uid: number): void {
    this.#used.delete(uid);
  }
}

/**
 * The uids live processes on this host run as (real or effective): another state directory's VMs, or
 * anything else that took a uid of the range. The pool skips them, so two orchestrators with the same
 * range do not put VMs under one uid (for a guarantee, give each state directory its own range).
 */
export async function uidsInUse(): Promise<Set<number>> {
  const uids = new Set<number>();
  const entries = await readdir("/proc").catch(() => [] as string[]);
  await Promise.all(
    entries
      .filter((entry) => /^\d+$/.test(entry))
      .map(async (pid) => {
        const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
        const fields = /^Uid:\s+(\d+)\s+(\d+)/m.exec(status);
        if (fields) {
          uids.add(Number(fields[1]));
          uids.add(Number(fields[2]));
        }
      }),
  );
  return uids;
}
