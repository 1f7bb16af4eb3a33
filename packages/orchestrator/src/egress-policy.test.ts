import { describe, expect, it } from "vitest";
import { configFromEnv, createConfig } from "./config.ts";
import {
  combineEgressPolicies,
  DEFAULT_EGRESS_POLICY,
  egressRules,
  parseEgressPolicy,
  resolveEgressPolicy,
  sameEgressPolicy,
} from "./egress-policy.ts";
import { type Ipv4Cidr, parseCidr } from "./ipv4.ts";

const context = {
  namespaceAddress: "10.200.0.2",
  resolvers: ["198.18.0.53"],
  hostAddressPool: parseCidr("10.200.0.0/16", { strict: true }) as Ipv4Cidr,
  refuseChain: "refuse",
};

describe("egress policy", () => {
  it("parses shorthand destinations into normalized ones that parse again unchanged", () => {
    const policy = parseEgressPolicy({
      default: "deny",
      allow: [
        "1.2.3.4",
        "10.1.2.3/8:443",
        "192.0.2.0/24:8000-8999/tcp",
        { cidr: "203.0.113.7", ports: [53] },
      ],
    });
    expect(policy.allow).toEqual([
      { cidr: "1.2.3.4/32", protocol: "any" },
      { cidr: "10.0.0.0/8", ports: ["443"], protocol: "any" },
      { cidr: "192.0.2.0/24", ports: ["8000-8999"], protocol: "tcp" },
      { cidr: "203.0.113.7/32", ports: ["53"], protocol: "any" },
    ]);
    expect(parseEgressPolicy(policy)).toEqual(policy);
  });

  it("rejects what is not a destination, with the offending value and the accepted forms", () => {
    for (const bad of ["example.com", "1.2.3.4:0", "1.2.3.4:70000", "300.1.1.1", "1.2.3.4:9-1", "::1"]) {
      const error = (() => {
        try {
          parseEgressPolicy({ allow: [bad] });
        } catch (e) {
          return e as { code: string; message: string };
        }
      })();
      expect(error?.code, bad).toBe("INVALID_OPTIONS");
      expect(error?.message, bad).toContain("allow");
    }
    expect(() => parseEgressPolicy({ default: "maybe" })).toThrow(/default/);
    expect(() => parseEgressPolicy({ maxConnections: 0 })).toThrow(/maxConnections/);
  });

  it("orders rules: anti-spoofing, replies, DNS, limit, allow, deny, default denies, default", () => {
    const rules = egressRules(
      parseEgressPolicy({ allow: ["169.254.169.254:80/tcp"], deny: ["0.0.0.0/0:25"], maxConnections: 100 }),
      context,
    );
    expect(rules).toEqual([
      "meta nfproto != ipv4 drop",
      "ip saddr != 10.200.0.2 drop",
      "ct state established,related accept",
      "ct state invalid drop",
      "ip daddr { 198.18.0.53 } meta l4proto { tcp, udp } th dport 53 accept",
      "ct state new ct count over 100 goto refuse",
      "ip daddr 169.254.169.254/32 meta l4proto tcp th dport { 80 } accept",
      "ip daddr 0.0.0.0/0 meta l4proto { tcp, udp } th dport { 25 } goto refuse",
      "fib daddr type { local, broadcast, multicast } goto refuse",
      "ip daddr { 169.254.0.0/16, 224.0.0.0/4, 10.200.0.0/16 } goto refuse",
      "accept",
    ]);
    expect(egressRules(parseEgressPolicy({ default: "deny" }), { ...context, resolvers: [] }).at(-1)).toBe(
      "goto refuse",
    );
  });

  it("refuses to render rules from addresses that are not addresses", () => {
    expect(() =>
      egressRules(DEFAULT_EGRESS_POLICY, { ...context, namespaceAddress: "10.0.0.2; flush ruleset" }),
    ).toThrow(/namespace address/);
    expect(() => egressRules(DEFAULT_EGRESS_POLICY, { ...context, resolvers: ["a"] })).toThrow(
      /DNS resolver/,
    );
  });

  it("combines a template's policy with a create's: the create's default and limits win, lists join", () => {
    const combined = combineEgressPolicies(
      { default: "deny", allow: ["1.1.1.1"], maxConnections: 10 },
      { allow: ["8.8.8.8"], egressBitsPerSecond: 1_000_000 },
    );
    expect(combined.default).toBe("deny");
    expect(combined.allow.map((a) => a.cidr)).toEqual(["8.8.8.8/32", "1.1.1.1/32"]);
    expect(combined).toMatchObject({ maxConnections: 10, egressBitsPerSecond: 1_000_000 });
    expect(combineEgressPolicies({ default: "deny" }, { default: "allow" }).default).toBe("allow");
    expect(combineEgressPolicies(undefined, undefined)).toEqual(DEFAULT_EGRESS_POLICY);
    expect(sameEgressPolicy(combineEgressPolicies(undefined, {}), DEFAULT_EGRESS_POLICY)).toBe(true);
    // Key order does not matter; content does.
    const config = parseEgressPolicy({ maxConnections: 5, deny: ["10.0.0.0/8"] });
    expect(sameEgressPolicy(resolveEgressPolicy(config), config)).toBe(true);
    expect(sameEgressPolicy({ ...config, maxConnections: 6 }, config)).toBe(false);
    // Config default, template, create.
    const layered = resolveEgressPolicy({ deny: ["10.0.0.0/8"] }, undefined, {
      default: "deny",
      allow: ["1.1.1.1"],
    });
    expect(layered).toMatchObject({
      default: "deny",
      deny: [{ cidr: "10.0.0.0/8" }],
      allow: [{ cidr: "1.1.1.1/32" }],
    });
  });

  it("is configurable from the environment, with every network option validated", () => {
    const config = configFromEnv({
      SBX_EGRESS_POLICY: '{"default":"deny","allow":["1.2.3.4:443"]}',
      SBX_DNS_SERVERS: "9.9.9.9, 1.1.1.1",
      SBX_NETWORK_POOL_SIZE: "4",
      SBX_FIREWALL_TABLE: "sbx_ci",
      SBX_PUBLISH_PORT_RANGE: "30000-30099",
    });
    expect(config.egressPolicy?.default).toBe("deny");
    expect(config.dnsServers).toEqual(["9.9.9.9", "1.1.1.1"]);
    expect(config).toMatchObject({
      networkPoolSize: 4,
      firewallTable: "sbx_ci",
      publishPortRange: "30000-30099",
    });
    expect(createConfig()).toMatchObject({ networkPoolSize: 0, firewallTable: "sbx", dnsServers: undefined });
    // A config is valid options again.
    expect(createConfig({ ...config, cpuTemplate: undefined }).egressPolicy).toEqual(config.egressPolicy);

    let issues: { variable?: string }[] = [];
    try {
      configFromEnv({
        SBX_EGRESS_POLICY: "{not json",
        SBX_DNS_SERVERS: "1.1.1.1,2.2.2.2,3.3.3.3",
        SBX_FIREWALL_TABLE: "sbx; flush ruleset",
        SBX_PUBLISH_PORT_RANGE: "9-1",
      });
    } catch (error) {
      issues = (error as { details: { issues: { variable?: string }[] } }).details.issues;
    }
    expect(issues.map((i) => i.variable).sort()).toEqual([
      "SBX_DNS_SERVERS",
      "SBX_EGRESS_POLICY",
      "SBX_FIREWALL_TABLE",
      "SBX_PUBLISH_PORT_RANGE",
    ]);
  });
});
