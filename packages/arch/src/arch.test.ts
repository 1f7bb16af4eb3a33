import { describe, expect, it } from "vitest";
import { ACCEPTED_ARCH_NAMES, hostArch, normalizeArch, targetArchFromEnv } from "./arch.ts";
import { ArchError } from "./errors.ts";
import type { Logger } from "./logger.ts";

function recordingLogger() {
  const warnings: { fields: Record<string, unknown>; message: string }[] = [];
  const logger: Logger = { warn: (fields, message) => warnings.push({ fields, message }) };
  return { logger, warnings };
}

describe("normalizeArch", () => {
  it.each([
    ["amd64", "amd64"],
    ["x86_64", "amd64"],
    ["x86-64", "amd64"],
    ["x64", "amd64"],
    [" X86_64 ", "amd64"],
    ["AMD64", "amd64"],
    ["arm64", "arm64"],
    ["aarch64", "arm64"],
    ["arm64/v8", "arm64"],
    ["ARMv8", "arm64"],
    ["\tAArch64\n", "arm64"],
  ])("maps %j to %s", (value, expected) => {
    expect(normalizeArch(value, { strict: true })).toBe(expected);
  });

  it("treats empty and undefined as the host (or the given fallback)", () => {
    expect(normalizeArch(undefined)).toBe(hostArch());
    expect(normalizeArch("  ")).toBe(hostArch());
    expect(normalizeArch("", { fallback: "arm64" })).toBe("arm64");
  });

  it("falls back to the host arch with one warning per distinct value", () => {
    const { logger, warnings } = recordingLogger();
    expect(normalizeArch("riscv64", { logger, fallback: "arm64" })).toBe("arm64");
    expect(normalizeArch("RISCV64", { logger, fallback: "arm64" })).toBe("arm64");
    expect(normalizeArch("ppc64le", { logger, fallback: "arm64" })).toBe("arm64");
    expect(warnings.map((w) => w.fields.value)).toEqual(["riscv64", "ppc64le"]);
    expect(warnings[0]?.message).toContain("riscv64");
  });

  it("warns again for the same value through a different logger", () => {
    const first = recordingLogger();
    const second = recordingLogger();
    normalizeArch("mips", { logger: first.logger });
    normalizeArch("mips", { logger: second.logger });
    expect(first.warnings).toHaveLength(1);
    expect(second.warnings).toHaveLength(1);
  });

  it.each(["constructor", "__proto__", "toString", "hasOwnProperty", "valueOf"])(
    "treats the Object.prototype name %j as unknown, not as an alias",
    (value) => {
      expect(() => normalizeArch(value, { strict: true })).toThrowError(
        expect.objectContaining({ code: "UNKNOWN_ARCH" }),
      );
      expect(normalizeArch(value, { fallback: "arm64" })).toBe("arm64");
      expect(normalizeArch(value, { fallback: "amd64" })).toBe("amd64");
    },
  );

  it("throws UNKNOWN_ARCH listing the accepted values in strict mode", () => {
    let error: unknown;
    try {
      normalizeArch("sparc", { strict: true });
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(ArchError);
    expect((error as ArchError).code).toBe("UNKNOWN_ARCH");
    for (const name of ACCEPTED_ARCH_NAMES) expect((error as ArchError).message).toContain(name);
  });
});

describe("hostArch", () => {
  it("maps Node's arch names", () => {
    expect(hostArch("x64")).toBe("amd64");
    expect(hostArch("arm64")).toBe("arm64");
  });

  it("matches the running process", () => {
    expect(hostArch()).toBe(process.arch === "arm64" ? "arm64" : "amd64");
  });

  it("rejects hosts Firecracker does not run on", () => {
    expect(() => hostArch("ia32")).toThrowError(expect.objectContaining({ code: "UNSUPPORTED_HOST_ARCH" }));
    expect(() => hostArch("constructor")).toThrowError(
      expect.objectContaining({ code: "UNSUPPORTED_HOST_ARCH" }),
    );
  });
});

describe("targetArchFromEnv", () => {
  it("reads TARGET_ARCH", () => {
    expect(targetArchFromEnv({ TARGET_ARCH: "aarch64" })).toBe("arm64");
    expect(targetArchFromEnv({ TARGET_ARCH: "x86_64" })).toBe("amd64");
  });

  it("uses the host when TARGET_ARCH is unset", () => {
    expect(targetArchFromEnv({})).toBe(hostArch());
  });

  it("passes strict mode through", () => {
    expect(() => targetArchFromEnv({ TARGET_ARCH: "s390x" }, { strict: true })).toThrowError(
      expect.objectContaining({ code: "UNKNOWN_ARCH" }),
    );
  });
});
