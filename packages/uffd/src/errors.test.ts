import { ArchError, SbxError } from "@sbx/arch";
import { describe, expect, it } from "vitest";
import { check, errnoName, UffdError } from "./errors.ts";

describe("errno names", () => {
  it("names the errnos the fault loop meets (<asm-generic/errno-base.h>, the same on x86_64 and arm64)", () => {
    const named = [17, 11, 3, 2, 4, 12, 18].map(errnoName);
    expect(named).toEqual(["EEXIST", "EAGAIN", "ESRCH", "ENOENT", "EINTR", "ENOMEM", "EXDEV"]);
  });

  it("has no name for 0, negatives, fractions or numbers the platform does not know", () => {
    for (const errno of [0, -17, 17.5, Number.NaN, 100_000]) expect(errnoName(errno)).toBeUndefined();
  });

  it("puts the name beside the number in the error, once, also when the error is rebuilt", () => {
    let thrown: unknown;
    try {
      check("ioctl(UFFDIO_COPY)", { value: -1, errno: 17 });
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toMatchObject({
      code: "SYSCALL_FAILED",
      errno: 17,
      errnoName: "EEXIST",
      syscall: "ioctl(UFFDIO_COPY)",
      message: "ioctl(UFFDIO_COPY) failed: errno 17 (EEXIST)",
    });
    // The server rebuilds the worker's error from its message: the name must not be added twice.
    const rebuilt = new UffdError("SYSCALL_FAILED", (thrown as Error).message, { errno: 17 });
    expect(rebuilt.message).toBe("ioctl(UFFDIO_COPY) failed: errno 17 (EEXIST)");
    expect(new UffdError("FAULT_FAILED", "errno 170 is not errno 17", { errno: 17 }).message).toBe(
      "errno 170 is not errno 17 (EEXIST)",
    );
    expect(new UffdError("CLOSED", "closed").errnoName).toBeUndefined();
  });
});

describe("UffdError.isInstance", () => {
  it("recognizes a UffdError from a second copy of the module, and nothing else", async () => {
    const specifier = "./errors.ts?second-copy";
    const copy = (await import(specifier)) as typeof import("./errors.ts");
    const error = new copy.UffdError("PEER_MISMATCH", "wrong peer", { details: { pid: 42 } });
    expect(error instanceof UffdError).toBe(false);
    expect([UffdError.isInstance(error), SbxError.isInstance(error)]).toEqual([true, true]);
    expect(error.details).toEqual({ pid: 42 });
    expect(UffdError.isInstance(new ArchError("INVALID_OPTIONS", "an arch error"))).toBe(false);
  });
});
