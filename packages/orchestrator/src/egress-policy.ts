// What a sandbox may reach, as data, and its translation into the nftables rules of its own chain.
// The chain is entered for every packet a sandbox sends that the host forwards or receives (its host
// veth is the key), so one chain covers both "the internet" and "the host itself".
import { z } from "zod";
import { OrchestratorError } from "./errors.ts";
import { formatCidr, type Ipv4Cidr, parseCidr, parseIpv4 } from "./ipv4.ts";

const PROTOCOLS = ["tcp", "udp", "any"] as const;

// Outputs are valid inputs again (normalized text), so a parsed policy can be stored and re-parsed.
const portRangeSchema = z
  .union([
    z.number().int().min(1).max(65_535),
    z
      .string()
      .trim()
      .regex(/^\d{1,5}(-\d{1,5})?$/, "a port (443) or a range (8000-8999)"),
  ])
  .transform((value, context) => {
    const [from, to = from] = String(value).split("-").map(Number) as [number, number?];
    if (from < 1 || (to ?? from) > 65_535 || from > (to ?? from)) {
      context.addIssue({
        code: "custom",
        message: `port range ${value} must be within 1-65535, low to high`,
      });
      return z.NEVER;
    }
    return from === to ? String(from) : `${from}-${to}`;
  });

const cidrSchema = z
  .string()
  .trim()
  .transform((text, context) => {
    // A bare address means that one host.
    const cidr = parseCidr(text.includes("/") ? text : `${text}/32`);
    if (!cidr) {
      context.addIssue({
        code: "custom",
        message: `"${text}" is not an IPv4 address or CIDR (1.2.3.4, 10.0.0.0/8)`,
      });
      return z.NEVER;
    }
    return formatCidr(cidr);
  });

const destinationObjectSchema = z.object({
  cidr: cidrSchema,
  /** Destination ports; none means every port. */
  ports: z.array(portRangeSchema).max(64).optional(),
  protocol: z.enum(PROTOCOLS).default("any"),
});

/**
 * A destination: `{ cidr, ports?, protocol? }`, or the shorthand `"10.0.0.0/8"`, `"1.2.3.4:443"`,
 * `"1.2.3.0/24:8000-8999/tcp"` (address or CIDR, optional port or range, optional protocol).
 */
export const egressDestinationSchema = z.union([
  destinationObjectSchema,
  z
    .string()
    .trim()
    .transform((text, context) => {
      const match = /^([0-9./]+)(?::(\d{1,5}(?:-\d{1,5})?))?(?:\/(tcp|udp))?$/.exec(text);
      const parsed = match
        ? destinationObjectSchema.safeParse({
            cidr: match[1],
            ...(match[2] ? { ports: [match[2]] } : {}),
            ...(match[3] ? { protocol: match[3] } : {}),
          })
        : undefined;
      if (!parsed?.success) {
        context.addIssue({
          code: "custom",
          message: `"${text}" is not a destination: write 1.2.3.4, 10.0.0.0/8, 1.2.3.4:443 or 1.2.3.0/24:8000-8999/tcp`,
        });
        return z.NEVER;
      }
      return parsed.data;
    }),
]);
export type EgressDestination = z.output<typeof destinationObjectSchema>;

/**
 * A sandbox's egress policy. Evaluation, first match wins: replies to connections already allowed,
 * the DNS resolvers on port 53, the connection limit, `allow`, `deny`, the default denies (the host's
 * own addresses, 169.254.0.0/16 with the metadata address, other sandboxes, multicast), then `default`.
 * So `allow` punches holes in everything after it, including the default denies.
 */
export const egressPolicySchema = z.object({
  default: z.enum(["allow", "deny"]).default("allow"),
  allow: z.array(egressDestinationSchema).max(256).default([]),
  deny: z.array(egressDestinationSchema).max(256).default([]),
  /** New connections the sandbox may hold open at once (through the host); beyond it new ones are refused. */
  maxConnections: z.number().int().min(1).max(1_000_000).optional(),
  /** Egress bandwidth in bits per second, shaped on the namespace's veth (tc tbf). */
  egressBitsPerSecond: z.number().int().min(8_000).max(100_000_000_000).optional(),
});
/** An egress policy as written: `default`, `allow`/`deny` destinations (shorthand strings accepted), limits. */
export type EgressPolicyInput = z.input<typeof egressPolicySchema>;
/** An egress policy parsed: destinations normalized, defaults filled. */
export type EgressPolicy = z.output<typeof egressPolicySchema>;

export const DEFAULT_EGRESS_POLICY: EgressPolicy = Object.freeze(egressPolicySchema.parse({}));

/** Ranges refused unless allowed: link-local (169.254.169.254, the usual metadata address) and multicast. */
export const DEFAULT_DENIED_RANGES: readonly string[] = Object.freeze(["169.254.0.0/16", "224.0.0.0/4"]);

export function parseEgressPolicy(input: unknown, what = "egress policy"): EgressPolicy {
  const parsed = egressPolicySchema.safeParse(input ?? {});
  if (!parsed.success) {
    throw new OrchestratorError("INVALID_OPTIONS", `${what}: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
      details: { input },
    });
  }
  return parsed.data;
}

/**
 * A template's policy with a create's on top: the create's `default` and limits win when set, the
 * lists are joined (the create's entries first; an allow always wins over a deny anyway).
 */
export function combineEgressPolicies(
  base: EgressPolicyInput | undefined,
  override: EgressPolicyInput | undefined,
): EgressPolicy {
  const a = parseEgressPolicy(base, "template egress policy");
  if (override === undefined) return a;
  const b = parseEgressPolicy(override, "create egress policy");
  const raw = override as Partial<Record<keyof EgressPolicy, unknown>>;
  const maxConnections = b.maxConnections ?? a.maxConnections;
  const egressBitsPerSecond = b.egressBitsPerSecond ?? a.egressBitsPerSecond;
  return {
    default: raw.default === undefined ? a.default : b.default,
    allow: [...b.allow, ...a.allow],
    deny: [...b.deny, ...a.deny],
    ...(maxConnections === undefined ? {} : { maxConnections }),
    ...(egressBitsPerSecond === undefined ? {} : { egressBitsPerSecond }),
  };
}

/** The policy in force for a sandbox: config default, then template, then create (later layers win). */
export function resolveEgressPolicy(...layers: (EgressPolicyInput | undefined)[]): EgressPolicy {
  return layers.reduce<EgressPolicy>(
    (combined, layer) => combineEgressPolicies(combined, layer),
    DEFAULT_EGRESS_POLICY,
  );
}

export interface EgressRuleContext {
  /** The namespace end of the sandbox's veth: the only source address its packets may carry. */
  namespaceAddress: string;
  /** Resolver addresses the guest is given: always reachable on port 53. */
  resolvers: readonly string[];
  /** The per-sandbox /30 pool (the config's, parsed once): other sandboxes are refused like the host unless allowed. */
  hostAddressPool: Ipv4Cidr;
  /** Chain that refuses (TCP reset, ICMP admin-prohibited otherwise), so clients fail fast. */
  refuseChain: string;
}

function match(destination: EgressDestination): string {
  const parts = [`ip daddr ${destination.cidr}`];
  if (destination.protocol !== "any") parts.push(`meta l4proto ${destination.protocol}`);
  else if (destination.ports) parts.push("meta l4proto { tcp, udp }");
  if (destination.ports && destination.ports.length > 0) {
    parts.push(`th dport { ${destination.ports.join(", ")} }`);
  }
  return parts.join(" ");
}

function requireAddress(text: string, what: string): string {
  if (parseIpv4(text) === undefined) {
    throw new OrchestratorError("INVALID_OPTIONS", `${what} "${text}" is not an IPv4 address`);
  }
  return text;
}

/** The rule bodies of one sandbox's chain, in evaluation order (see egressPolicySchema). */
export function egressRules(policy: EgressPolicy, context: EgressRuleContext): string[] {
  const source = requireAddress(context.namespaceAddress, "namespace address");
  const refuse = `goto ${context.refuseChain}`;
  const rules = [
    // The namespace masquerades its guest, so anything else is forged (or IPv6, which sbx does not route).
    "meta nfproto != ipv4 drop",
    `ip saddr != ${source} drop`,
    "ct state established,related accept",
    "ct state invalid drop",
  ];
  const resolvers = context.resolvers.map((r) => requireAddress(r, "DNS resolver"));
  if (resolvers.length > 0) {
    rules.push(`ip daddr { ${resolvers.join(", ")} } meta l4proto { tcp, udp } th dport 53 accept`);
  }
  if (policy.maxConnections !== undefined) {
    // Per rule, so per sandbox: the chain is this sandbox's alone.
    rules.push(`ct state new ct count over ${policy.maxConnections} ${refuse}`);
  }
  for (const destination of policy.allow) rules.push(`${match(destination)} accept`);
  for (const destination of policy.deny) rules.push(`${match(destination)} ${refuse}`);
  // Every address of the host, on any interface (its uplink, the veths, docker bridges): local delivery.
  rules.push(`fib daddr type { local, broadcast, multicast } ${refuse}`);
  rules.push(
    `ip daddr { ${[...DEFAULT_DENIED_RANGES, formatCidr(context.hostAddressPool)].join(", ")} } ${refuse}`,
  );
  rules.push(policy.default === "allow" ? "accept" : refuse);
  return rules;
}

function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value && typeof value === "object") {
    const entries = Object.entries(value).filter(([, v]) => v !== undefined);
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

/** Two policies yield the same rules (a pooled network already has the default one in force). */
export function sameEgressPolicy(a: EgressPolicy, b: EgressPolicy): boolean {
  return canonical(a) === canonical(b);
}
