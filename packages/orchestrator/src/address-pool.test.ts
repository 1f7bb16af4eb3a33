import { describe, expect, it } from "vitest";
import { AddressPool } from "./address-pool.ts";
import { cidrsOverlap, formatIpv4, parseCidr, parseIpv4 } from "./ipv4.ts";

describe("ipv4", () => {
  it("parses and formats addresses and CIDRs strictly", () => {
    expect(parseIpv4("10.200.1.255")).toBe(10 * 2 ** 24 + 200 * 2 ** 16 + 1 * 256 + 255);
    expect(formatIpv4(parseIpv4("192.168.241.2")!)).toBe("192.168.241.2");
    for (const bad of ["256.0.0.1", "1.2.3", "01.2.3.4", "a.b.c.d", "1.2.3.4.5", ""]) {
      expect(parseIpv4(bad)).toBeUndefined();
    }
    expect(parseCidr("10.200.0.0/16", { strict: true })).toEqual({
      network: parseIpv4("10.200.0.0"),
      prefixLength: 16,
    });
    expect(parseCidr("10.200.0.1/16", { strict: true })).toBeUndefined();
    expect(parseCidr("10.200.0.1/33")).toBeUndefined();
    expect(cidrsOverlap(parseCidr("10.0.0.0/8")!, parseCidr("10.200.0.0/16")!)).toBe(true);
    expect(cidrsOverlap(parseCidr("10.200.0.0/16")!, parseCidr("192.168.241.0/29")!)).toBe(false);
  });
});

describe("AddressPool", () => {
  it("splits the pool into /30 blocks, host .1 and namespace .2", () => {
    const pool = new AddressPool("10.200.0.0/16");
    expect(pool.capacity).toBe(16384);
    expect(pool.allocate()).toEqual({
      index: 0,
      hostAddress: "10.200.0.1",
      namespaceAddress: "10.200.0.2",
      prefixLength: 30,
    });
    expect(pool.allocate().hostAddress).toBe("10.200.0.5");
    expect(pool.addressesFor(64)).toMatchObject({
      hostAddress: "10.200.1.1",
      namespaceAddress: "10.200.1.2",
    });
    expect(pool.addressesFor(16383).namespaceAddress).toBe("10.200.255.254");
    expect(() => pool.addressesFor(16384)).toThrow(/outside the pool/);
  });

  it("reuses released blocks, honours reservations and reports exhaustion", () => {
    const pool = new AddressPool("10.200.0.0/29");
    expect(pool.capacity).toBe(2);
    pool.reserve(0);
    expect(() => pool.reserve(0)).toThrow(/already in use/);
    expect(pool.allocate().index).toBe(1);
    expect(() => pool.allocate()).toThrow(expect.objectContaining({ code: "ADDRESS_POOL_EXHAUSTED" }));
    pool.release(0);
    expect(pool.inUse).toBe(1);
    expect(pool.allocate().index).toBe(0);
  });

  it("refuses pools that are not network addresses", () => {
    expect(() => new AddressPool("10.200.0.1/16")).toThrow(/network address/);
    expect(() => new AddressPool("10.200.0.0/31")).toThrow(/network address/);
  });
});
