import { describe, expect, it } from "vitest";
import { newSandboxId, resolveIdPrefix, sandboxIdSchema } from "./sandbox-id.ts";

describe("resolveIdPrefix", () => {
  const ids = ["a1b2c3d4e5f6", "a1b2ffffffff", "0badcafe0000"];

  it("resolves exact ids and unique prefixes", () => {
    expect(resolveIdPrefix("0b", ids)).toBe("0badcafe0000");
    expect(resolveIdPrefix("a1b2c", ids)).toBe("a1b2c3d4e5f6");
    expect(resolveIdPrefix(" a1b2f ", ids)).toBe("a1b2ffffffff");
    // An id that is also a prefix of a longer id still resolves to itself.
    expect(resolveIdPrefix("ab", ["ab", "abc"])).toBe("ab");
  });

  it("lists every match of an ambiguous prefix", () => {
    expect(() => resolveIdPrefix("a1b2", ids)).toThrow(
      expect.objectContaining({
        code: "ID_PREFIX_AMBIGUOUS",
        details: { prefix: "a1b2", matches: ["a1b2c3d4e5f6", "a1b2ffffffff"] },
      }),
    );
    expect(() => resolveIdPrefix("a", ids)).toThrow(/a1b2c3d4e5f6, a1b2ffffffff/);
  });

  it("reports unknown and empty prefixes", () => {
    expect(() => resolveIdPrefix("zz", ids)).toThrow(expect.objectContaining({ code: "SANDBOX_NOT_FOUND" }));
    expect(() => resolveIdPrefix("zz", [])).toThrow(/there are no sandboxes/);
    expect(() => resolveIdPrefix("  ", ids)).toThrow(expect.objectContaining({ code: "INVALID_ID" }));
  });

  it("makes valid, distinct ids", () => {
    const made = new Set(Array.from({ length: 100 }, () => newSandboxId()));
    expect(made.size).toBe(100);
    for (const id of made) expect(sandboxIdSchema.safeParse(id).success).toBe(true);
    expect(sandboxIdSchema.safeParse("../etc").success).toBe(false);
  });
});
