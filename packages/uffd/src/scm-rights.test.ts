import { xorshift32 } from "@sbx/arch/testing";
import { describe, expect, it } from "vitest";
import { UffdError } from "./errors.ts";
import { MSG_CTRUNC } from "./linux.ts";
import { parseScmRights, receivedFdsOf } from "./scm-rights.ts";
import { fdCount } from "./test-counts.ts";

/** A control buffer as the kernel lays it out: 64-bit cmsghdr, 8-byte aligned. */
function control(messages: { level?: number; type?: number; fds: number[]; length?: number }[]): Uint8Array {
  const parts: Buffer[] = [];
  for (const m of messages) {
    const length = m.length ?? 16 + 4 * m.fds.length;
    const padded = (16 + 4 * m.fds.length + 7) & ~7;
    const b = Buffer.alloc(padded);
    b.writeBigUInt64LE(BigInt(length), 0);
    b.writeInt32LE(m.level ?? 1, 8);
    b.writeInt32LE(m.type ?? 1, 12);
    for (const [i, fd] of m.fds.entries()) b.writeInt32LE(fd, 16 + 4 * i);
    parts.push(b);
  }
  return new Uint8Array(Buffer.concat(parts));
}

function rejection(fn: () => unknown): UffdError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(UffdError);
    return error as UffdError;
  }
  throw new Error("expected a rejection");
}

describe("parseScmRights", () => {
  it("reads the fds of one and of several SCM_RIGHTS messages", () => {
    expect(parseScmRights(control([{ fds: [7] }]))).toEqual([7]);
    expect(parseScmRights(control([{ fds: [7, 9] }]))).toEqual([7, 9]);
    expect(parseScmRights(control([{ fds: [7] }, { fds: [8, 10, 11] }]))).toEqual([7, 8, 10, 11]);
    expect(parseScmRights(new Uint8Array(0))).toEqual([]);
  });

  it("rejects truncated headers, lengths past the buffer, other levels and types, and MSG_CTRUNC", () => {
    const truncated = control([{ fds: [7] }]).subarray(0, 12);
    expect(rejection(() => parseScmRights(truncated)).message).toMatch(/truncated header/);
    expect(rejection(() => parseScmRights(control([{ fds: [7], length: 64 }]))).message).toMatch(
      /past the buffer/,
    );
    expect(rejection(() => parseScmRights(control([{ fds: [7], length: 8 }]))).message).toMatch(
      /shorter than its header/,
    );
    expect(rejection(() => parseScmRights(control([{ fds: [7], level: 0 }]))).message).toMatch(
      /unexpected level/,
    );
    expect(rejection(() => parseScmRights(control([{ fds: [7], type: 2 }]))).message).toMatch(/type 2/);
    expect(rejection(() => parseScmRights(control([{ fds: [7], length: 18 }]))).message).toMatch(/payload/);
    const ctrunc = rejection(() => parseScmRights(control([{ fds: [7, 8] }]), MSG_CTRUNC));
    expect(ctrunc.message).toMatch(/MSG_CTRUNC/);
    // The fds of well-formed messages were installed by the kernel: the caller must close exactly those.
    expect(receivedFdsOf(ctrunc)).toEqual([7, 8]);
    const second = rejection(() => parseScmRights(control([{ fds: [7] }, { fds: [9], type: 3 }])));
    expect(receivedFdsOf(second)).toEqual([7]);
    // Credentials first (SO_PASSCRED), then fds: those fds were installed too, and must be closed.
    const credentialsFirst = rejection(() =>
      parseScmRights(control([{ fds: [1234, 0, 0], type: 2 }, { fds: [7, 8] }, { fds: [9] }])),
    );
    expect(credentialsFirst.message).toMatch(/type 2/);
    expect(receivedFdsOf(credentialsFirst)).toEqual([7, 8, 9]);
    expect(receivedFdsOf(rejection(() => parseScmRights(truncated)))).toEqual([]);
  });

  it("survives fuzzing: random and mutated buffers give fds or a UffdError, and open no fd", () => {
    const before = fdCount();
    const rand = xorshift32(12345);
    const seed = control([{ fds: [3, 4] }, { fds: [5] }]);
    let errors = 0;
    for (let i = 0; i < 20_000; i++) {
      const buffer =
        i % 2 === 0 ? Uint8Array.from({ length: rand() % 80 }, () => rand() & 0xff) : Uint8Array.from(seed);
      if (i % 2 === 1) for (let m = 0; m <= rand() % 4; m++) buffer[rand() % buffer.length] = rand() & 0xff;
      try {
        const fds = parseScmRights(
          buffer.subarray(0, i % 2 === 1 ? rand() % (buffer.length + 1) : buffer.length),
        );
        for (const fd of fds) expect(fd).toBeGreaterThanOrEqual(0);
      } catch (error) {
        expect(error).toBeInstanceOf(UffdError);
        expect((error as UffdError).code).toBe("BAD_CONTROL_MESSAGE");
        errors++;
      }
    }
    expect(errors).toBeGreaterThan(5_000);
    expect(fdCount()).toBe(before);
  });
});
