import { describe, expect, it } from "vitest";
import { checkProcessIdentity, parseProcStat, processIdentity } from "./process-identity.ts";

describe("process identity", () => {
  it("parses /proc/<pid>/stat even when the command name holds ') '", () => {
    const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
    fields[0] = "S";
    fields[1] = "42";
    fields[19] = "123456";
    expect(parseProcStat(`77 (evil) (name) ${fields.join(" ")}`)).toEqual({
      state: "S",
      parentPid: 42,
      startTime: "123456",
    });
    expect(parseProcStat("garbage")).toBeUndefined();
  });

  it("identifies this process and tells a reused pid from the same process", async () => {
    const self = await processIdentity(process.pid);
    expect(self?.cmdline.length).toBeGreaterThan(0);
    expect(await checkProcessIdentity(self!)).toEqual({ alive: true, same: true });
    expect(await checkProcessIdentity({ ...self!, startTime: "1" })).toMatchObject({
      alive: true,
      same: false,
    });
    expect(await checkProcessIdentity({ pid: 2 ** 22 + 1, startTime: "1", cmdline: [] })).toMatchObject({
      alive: false,
    });
  });
});
