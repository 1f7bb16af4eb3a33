import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hostResolvers, parseNameservers } from "./host-resolvers.ts";

describe("host resolvers", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sbx-resolvers-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("keeps IPv4 nameservers a guest can reach, in order, without duplicates", () => {
    const text = [
      "# generated",
      "nameserver 127.0.0.53",
      "nameserver 10.0.0.2",
      "  nameserver 10.0.0.3 # second",
      "nameserver ::1",
      "nameserver 10.0.0.2",
      "nameserver 0.0.0.0",
      "search example.internal",
    ].join("\n");
    expect(parseNameservers(text)).toEqual(["10.0.0.2", "10.0.0.3"]);
  });

  it("reads systemd-resolved's upstream list before a stub-only resolv.conf, and gives at most two", async () => {
    const stub = join(dir, "stub.conf");
    const upstream = join(dir, "upstream.conf");
    await writeFile(stub, "nameserver 127.0.0.53\n");
    await writeFile(upstream, "nameserver 9.9.9.9\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n");
    expect(await hostResolvers([join(dir, "missing.conf"), upstream, stub])).toEqual(["9.9.9.9", "1.1.1.1"]);
    // Only a loopback stub: no resolver to hand the guest.
    expect(await hostResolvers([stub])).toEqual([]);
  });
});
