import { isAbsolute } from "node:path";
import {
  ACCEPTED_ARCH_NAMES,
  type Arch,
  hostArch,
  normalizeArch,
  pathSegmentSchema,
  type StaticCpuTemplateName,
} from "@sbx/arch";
import { CpuTemplateError, parseCpuTemplateSetting } from "@sbx/cpu-template";
import { DEFAULT_BUSYBOX_VERSION } from "@sbx/rootfs";
import { z } from "zod";
import { type EgressPolicy, egressPolicySchema } from "./egress-policy.ts";
import { OrchestratorError } from "./errors.ts";
import { cidrContains, cidrsOverlap, formatIpv4, type Ipv4Cidr, parseCidr, parseIpv4 } from "./ipv4.ts";
import { FIREWALL_TABLE_NAME } from "./nftables.ts";

/**
 * The busybox version templates are built with: @sbx/rootfs's, which resolves busybox for the build
 * (one definition: the Go orchestrator had two such defaults and they drifted apart).
 */
export { DEFAULT_BUSYBOX_VERSION };

/** Defaults that depend on the target arch. Real arm64 kernels boot more slowly. */
export const ARCH_DEFAULTS: Readonly<
  Record<Arch, { readyTimeoutMs: number; provisioningTimeoutMs: number; kernelName: string }>
> = Object.freeze({
  amd64: Object.freeze({ readyTimeoutMs: 10_000, provisioningTimeoutMs: 300_000, kernelName: "vmlinux" }),
  arm64: Object.freeze({ readyTimeoutMs: 30_000, provisioningTimeoutMs: 900_000, kernelName: "Image" }),
});

/** Every arch-independent default, in one place. */
export const CONFIG_DEFAULTS = Object.freeze({
  busyboxDir: "/var/lib/sbx/busybox",
  busyboxVersion: DEFAULT_BUSYBOX_VERSION,
  firecrackerRoot: "/var/lib/sbx/firecracker",
  firecrackerVersion: "v1.14.2",
  kernelRoot: "/var/lib/sbx/kernels",
  kernelVersion: "6.1",
  stateDir: "/var/lib/sbx/state",
  maxSandboxes: 64,
  maxConcurrentCreates: 8,
  maxConcurrentBuilds: 1,
  waitLogIntervalMs: 5_000,
  /** Host-side veth addresses, one /30 per sandbox; only ever assigned to links sbx creates. */
  hostAddressPool: "10.200.0.0/16",
  /** The TAP inside every sandbox's namespace: the same name and address everywhere (clones). */
  tapName: "vmtap0",
  tapAddress: "192.168.241.1/29",
  guestAddress: "192.168.241.2",
  /** Namespaces prepared ahead of demand; 0 creates each on demand. */
  networkPoolSize: 0,
  /** Untrusted image layers: at most this many uncompressed tar bytes over all layers (16 GiB). */
  unpackMaxBytes: 16 * 1024 ** 3,
  /** ... this many tar entries over all layers. */
  unpackMaxEntries: 2_000_000,
  /** ... and paths of at most this many components. */
  unpackMaxPathDepth: 256,
  /** The host's nftables table sbx owns (`inet sbx`); `nft delete table inet sbx` removes all of it. */
  firewallTable: "sbx",
  /** Host ports `expose(port, { publish: true })` picks from. */
  publishPortRange: "40000-40999",
  /** Guest memory memfd from Firecracker (a fork feature; upstream never sends one): off by default. */
  useMemfd: "off",
  /** A create that does not fit the host waits (bounded, FIFO) for capacity; see docs/operations.md. */
  admission: "queue",
  admissionQueueSize: 64,
  admissionTimeoutMs: 30_000,
  /** Guest vCPUs per host vCPU, as E2B runs its hosts: guests mostly idle. */
  vcpuOvercommit: 4,
  /** Host memory is not overcommitted: a guest that touches all of it must not push the host into OOM. */
  memoryOvercommit: 1,
  /** Guests with a free-page-reporting balloon give idle memory back, so they may be packed tighter. */
  balloonMemoryOvercommit: 1.5,
  reservedVcpus: 0,
  /** uids (and the same gids) a jailed VM runs as, one per VM, never one in use by a sandbox record. */
  jailUidRange: "200000-299999",
  /** Every VM's cgroup is `<parent>/<state key>/<vm id>`, so two state directories never sweep each other's. */
  jailParentCgroup: "sbx",
});

export const ADMISSION_MODES = ["queue", "reject", "off"] as const;
/** queue: wait for capacity (bounded); reject: refuse at once; off: count, never refuse (the old behaviour). */
export type AdmissionMode = (typeof ADMISSION_MODES)[number];

export const USE_MEMFD_MODES = ["off", "prefer", "require"] as const;
export type UseMemfdMode = (typeof USE_MEMFD_MODES)[number];

export type CpuTemplateChoice =
  | { kind: "none" }
  | {
      kind: "static";
      name: StaticCpuTemplateName;
      /** Static templates are deprecated upstream: this names the custom replacement (logged at start). */
      deprecation: string;
    }
  | { kind: "custom"; path: string };

/** The cgroup every jailed VM's cgroups go under, relative to each hierarchy's root. */
export const jailParentCgroupSchema = z
  .string()
  .trim()
  .regex(/^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/, "must be a relative cgroup path like sbx")
  .refine((text) => !text.split("/").includes(".."), { message: "must not contain .." });
/** An absolute path setting. */
export const absolutePath = z
  .string()
  .trim()
  .min(1)
  .refine((path) => isAbsolute(path), { message: "must be an absolute path" });
const pathSegment = z.string().trim().pipe(pathSegmentSchema);
const positiveInt = (max: number) => z.number().int().min(1).max(max);
const overcommitRatio = z.number().min(0.1).max(64);
const cidrText = z
  .string()
  .trim()
  .refine((text) => parseCidr(text) !== undefined, { message: "must be an IPv4 CIDR like 10.200.0.0/16" });

/** Plain options; every field is optional and defaults from CONFIG_DEFAULTS / ARCH_DEFAULTS. */
export const orchestratorOptionsSchema = z.object({
  /** Any spelling normalizeArch accepts (x86_64, aarch64, ...); default: the host arch. */
  targetArch: z.string().optional(),
  /** A static template name (one of @sbx/arch's STATIC_CPU_TEMPLATE_NAMES for the arch) or "None". */
  cpuTemplate: z.string().trim().optional(),
  customCpuTemplatePath: absolutePath.optional(),
  /**
   * Firecracker's static templates in custom form (`tests/data/custom_cpu_templates` of its release):
   * a template built with a static template keeps that form, so a resume can check moves between CPUs.
   */
  staticCpuTemplatesDir: absolutePath.optional(),
  busyboxDir: absolutePath.optional(),
  busyboxVersion: pathSegment.optional(),
  firecrackerRoot: absolutePath.optional(),
  firecrackerVersion: pathSegment.optional(),
  /** An explicit Firecracker binary; bypasses the artifact root (still arch-checked). */
  firecrackerBin: absolutePath.optional(),
  /**
   * The jailer every Firecracker runs under (`JAILER_BIN`); default `{firecrackerRoot}/{version}/{arch}/jailer`,
   * arch- and checksum-checked like Firecracker. Without one, VMs start only with `unjailed`.
   */
  jailerBin: absolutePath.optional(),
  /** Run Firecracker without the jailer, as root (`SBX_UNJAILED=1`): an explicit opt-out, warned at every start. */
  unjailed: z.boolean().optional(),
  /** Where each VM's chroot is made; default `{stateDir}/jail` (must be on the state directory's file system). */
  jailChrootBaseDir: absolutePath.optional(),
  /** `from-to`: the uids/gids jailed VMs run as (one per VM). */
  jailUidRange: z
    .string()
    .trim()
    .regex(/^\d{1,10}-\d{1,10}$/, "must be a uid range like 200000-299999")
    .refine(
      (text) => {
        const [from, to] = text.split("-").map(Number) as [number, number];
        return from >= 1 && to <= 0xfffffffe && from <= to;
      },
      { message: "must be within 1-4294967294, low to high (uid 0 is root)" },
    )
    .optional(),
  /** 1 or 2; default 2 when the cgroup2 hierarchy offers cpu, memory and pids, else 1. */
  jailCgroupVersion: z.union([z.literal(1), z.literal(2)]).optional(),
  /** The cgroup (relative to each hierarchy's root) every VM's cgroup is made under. */
  jailParentCgroup: jailParentCgroupSchema.optional(),
  kernelRoot: absolutePath.optional(),
  kernelVersion: pathSegment.optional(),
  kernelName: pathSegment.optional(),
  stateDir: absolutePath.optional(),
  maxSandboxes: positiveInt(65_536).optional(),
  maxConcurrentCreates: positiveInt(1024).optional(),
  maxConcurrentBuilds: positiveInt(64).optional(),
  readyTimeoutMs: positiveInt(24 * 3600_000).optional(),
  provisioningTimeoutMs: positiveInt(24 * 3600_000).optional(),
  waitLogIntervalMs: positiveInt(3600_000).optional(),
  hostAddressPool: cidrText.optional(),
  tapName: z
    .string()
    .trim()
    .regex(/^[A-Za-z0-9_.-]{1,15}$/, "must be a Linux interface name (1-15 of A-Z a-z 0-9 _ . -)")
    .optional(),
  tapAddress: cidrText.optional(),
  guestAddress: z
    .string()
    .trim()
    .refine((text) => parseIpv4(text) !== undefined, { message: "must be an IPv4 address" })
    .optional(),
  networkPoolSize: z.number().int().min(0).max(1024).optional(),
  unpackMaxBytes: z.number().int().positive().optional(),
  unpackMaxEntries: z.number().int().positive().optional(),
  unpackMaxPathDepth: z.number().int().min(8).optional(),
  firewallTable: z
    .string()
    .trim()
    .regex(FIREWALL_TABLE_NAME, "must be a letter then up to 30 of A-Z a-z 0-9 _")
    .optional(),
  /** The guest's resolvers (at most 2, the kernel's ip= carries two); default the host's upstream ones. */
  dnsServers: z
    .preprocess(
      (value) =>
        typeof value === "string"
          ? value
              .split(",")
              .map((s) => s.trim())
              .filter(Boolean)
          : value,
      z
        .array(
          z.string().refine((text) => parseIpv4(text) !== undefined, { message: "must be IPv4 addresses" }),
        )
        .max(2, "at most 2 resolvers (the kernel's ip= carries two)"),
    )
    .optional(),
  publishPortRange: z
    .string()
    .trim()
    .regex(/^\d{1,5}-\d{1,5}$/, "must be a port range like 40000-40999")
    .refine(
      (text) => {
        const [from, to] = text.split("-").map(Number) as [number, number];
        return from >= 1 && to <= 65_535 && from <= to;
      },
      { message: "must be within 1-65535, low to high" },
    )
    .optional(),
  /** The default egress policy of every sandbox (JSON in SBX_EGRESS_POLICY); templates and creates add to it. */
  egressPolicy: z
    .preprocess((value, context) => {
      if (typeof value !== "string") return value;
      try {
        return JSON.parse(value);
      } catch {
        context.addIssue({ code: "custom", message: "must be a JSON egress policy" });
        return z.NEVER;
      }
    }, egressPolicySchema)
    .optional(),
  /**
   * off: never expect a memfd. prefer: use it when Firecracker sends one, else warn and count a
   * fallback. require: a create without one fails (MEMFD_MISSING).
   */
  useMemfd: z.enum(USE_MEMFD_MODES).optional(),
  /**
   * UFFD restores on arm64 need a seccomp decision (Firecracker's default aarch64 filter lacks the
   * userfaultfd syscalls): a compiled filter that allows them (recommended), or no seccomp at all.
   */
  seccompFilter: absolutePath.optional(),
  allowNoSeccomp: z.boolean().optional(),
  /** What a create that does not fit the host does: queue (wait), reject (CAPACITY_EXCEEDED at once) or off. */
  admission: z.enum(ADMISSION_MODES).optional(),
  /** Creates that may wait for capacity at once; one more is refused (CAPACITY_EXCEEDED). */
  admissionQueueSize: z.number().int().min(0).max(65_536).optional(),
  /** How long a create waits for capacity; never counted against its boot or alive timeouts. */
  admissionTimeoutMs: positiveInt(24 * 3600_000).optional(),
  vcpuOvercommit: overcommitRatio.optional(),
  memoryOvercommit: overcommitRatio.optional(),
  balloonMemoryOvercommit: overcommitRatio.optional(),
  /** The host's vCPUs and memory as admission sees them; default what the host reports. */
  hostVcpus: positiveInt(65_536).optional(),
  hostMemoryMib: positiveInt(1 << 30).optional(),
  /** Headroom for the host itself, never given to guests; memory default 10% (at least 256 MiB). */
  reservedVcpus: z.number().int().min(0).max(65_536).optional(),
  reservedMemoryMib: z
    .number()
    .int()
    .min(0)
    .max(1 << 30)
    .optional(),
});
/** What createConfig takes: every setting optional, defaults in CONFIG_DEFAULTS, env names in configFromEnv. */
export type OrchestratorOptions = z.input<typeof orchestratorOptionsSchema>;
type OptionName = keyof OrchestratorOptions;

/** The config's network addresses, parsed once when it is made: what every user of them takes. */
export interface ParsedAddresses {
  /** The pool each sandbox's /30 comes from. */
  hostAddressPool: Ipv4Cidr;
  /** The subnet inside each VM namespace that the TAP and the guest share. */
  tapSubnet: Ipv4Cidr;
  /** The TAP's address, the guest's gateway (dotted quad, no prefix). */
  tapAddress: string;
  guestAddress: string;
}

/** A complete, validated configuration: what every part of the orchestrator reads. */
export interface OrchestratorConfig {
  targetArch: Arch;
  cpuTemplate: CpuTemplateChoice;
  staticCpuTemplatesDir: string | undefined;
  busyboxDir: string;
  busyboxVersion: string;
  firecrackerRoot: string;
  firecrackerVersion: string;
  firecrackerBin: string | undefined;
  jailerBin: string | undefined;
  unjailed: boolean;
  /** Undefined: `{stateDir}/jail`. */
  jailChrootBaseDir: string | undefined;
  /** `from-to` (parsePortRange reads it too). */
  jailUidRange: string;
  /** Undefined: chosen per host (see jailCgroupVersion in the options). */
  jailCgroupVersion: 1 | 2 | undefined;
  jailParentCgroup: string;
  kernelRoot: string;
  kernelVersion: string;
  kernelName: string;
  stateDir: string;
  maxSandboxes: number;
  maxConcurrentCreates: number;
  maxConcurrentBuilds: number;
  readyTimeoutMs: number;
  provisioningTimeoutMs: number;
  waitLogIntervalMs: number;
  hostAddressPool: string;
  tapName: string;
  tapAddress: string;
  guestAddress: string;
  /** hostAddressPool, tapAddress and guestAddress, parsed (valid, or the config was refused). */
  addresses: Readonly<ParsedAddresses>;
  networkPoolSize: number;
  unpackMaxBytes: number;
  unpackMaxEntries: number;
  unpackMaxPathDepth: number;
  firewallTable: string;
  /** Undefined: the host's upstream resolvers, read when a network is created (hostResolvers()). */
  dnsServers: string[] | undefined;
  /** `from-to`, e.g. 40000-40999 (parsePortRange). */
  publishPortRange: string;
  egressPolicy: EgressPolicy | undefined;
  useMemfd: UseMemfdMode;
  seccompFilter: string | undefined;
  allowNoSeccomp: boolean;
  admission: AdmissionMode;
  admissionQueueSize: number;
  admissionTimeoutMs: number;
  vcpuOvercommit: number;
  memoryOvercommit: number;
  balloonMemoryOvercommit: number;
  /** Undefined: what the host reports (resolveCapacity). */
  hostVcpus: number | undefined;
  hostMemoryMib: number | undefined;
  reservedVcpus: number;
  /** Undefined: 10% of the host's memory, at least 256 MiB. */
  reservedMemoryMib: number | undefined;
}

type ValueKind = "string" | "integer" | "number" | "boolean";

/** The environment variable behind each option; `configFromEnv` reads exactly these. */
export const CONFIG_ENV_VARIABLES: Readonly<Record<OptionName, { variable: string; kind: ValueKind }>> =
  Object.freeze({
    targetArch: { variable: "TARGET_ARCH", kind: "string" },
    cpuTemplate: { variable: "FC_CPU_TEMPLATE", kind: "string" },
    customCpuTemplatePath: { variable: "FC_CUSTOM_CPU_TEMPLATE_PATH", kind: "string" },
    staticCpuTemplatesDir: { variable: "SBX_STATIC_CPU_TEMPLATES_DIR", kind: "string" },
    busyboxDir: { variable: "HOST_BUSYBOX_DIR", kind: "string" },
    busyboxVersion: { variable: "BUSYBOX_VERSION", kind: "string" },
    firecrackerRoot: { variable: "FIRECRACKER_DIR", kind: "string" },
    firecrackerVersion: { variable: "FIRECRACKER_VERSION", kind: "string" },
    firecrackerBin: { variable: "FIRECRACKER_BIN", kind: "string" },
    jailerBin: { variable: "JAILER_BIN", kind: "string" },
    unjailed: { variable: "SBX_UNJAILED", kind: "boolean" },
    jailChrootBaseDir: { variable: "SBX_JAIL_CHROOT_BASE_DIR", kind: "string" },
    jailUidRange: { variable: "SBX_JAIL_UID_RANGE", kind: "string" },
    jailCgroupVersion: { variable: "SBX_JAIL_CGROUP_VERSION", kind: "integer" },
    jailParentCgroup: { variable: "SBX_JAIL_PARENT_CGROUP", kind: "string" },
    kernelRoot: { variable: "KERNEL_DIR", kind: "string" },
    kernelVersion: { variable: "KERNEL_VERSION", kind: "string" },
    kernelName: { variable: "KERNEL_NAME", kind: "string" },
    stateDir: { variable: "SBX_STATE_DIR", kind: "string" },
    maxSandboxes: { variable: "SBX_MAX_SANDBOXES", kind: "integer" },
    maxConcurrentCreates: { variable: "SBX_MAX_CONCURRENT_CREATES", kind: "integer" },
    maxConcurrentBuilds: { variable: "SBX_MAX_CONCURRENT_BUILDS", kind: "integer" },
    readyTimeoutMs: { variable: "SBX_READY_TIMEOUT_MS", kind: "integer" },
    provisioningTimeoutMs: { variable: "SBX_PROVISIONING_TIMEOUT_MS", kind: "integer" },
    waitLogIntervalMs: { variable: "SBX_WAIT_LOG_INTERVAL_MS", kind: "integer" },
    hostAddressPool: { variable: "SBX_HOST_ADDRESS_POOL", kind: "string" },
    tapName: { variable: "SBX_TAP_NAME", kind: "string" },
    tapAddress: { variable: "SBX_TAP_ADDRESS", kind: "string" },
    guestAddress: { variable: "SBX_GUEST_ADDRESS", kind: "string" },
    networkPoolSize: { variable: "SBX_NETWORK_POOL_SIZE", kind: "integer" },
    unpackMaxBytes: { variable: "SBX_UNPACK_MAX_BYTES", kind: "integer" },
    unpackMaxEntries: { variable: "SBX_UNPACK_MAX_ENTRIES", kind: "integer" },
    unpackMaxPathDepth: { variable: "SBX_UNPACK_MAX_PATH_DEPTH", kind: "integer" },
    firewallTable: { variable: "SBX_FIREWALL_TABLE", kind: "string" },
    dnsServers: { variable: "SBX_DNS_SERVERS", kind: "string" },
    publishPortRange: { variable: "SBX_PUBLISH_PORT_RANGE", kind: "string" },
    egressPolicy: { variable: "SBX_EGRESS_POLICY", kind: "string" },
    useMemfd: { variable: "SBX_USE_MEMFD", kind: "string" },
    seccompFilter: { variable: "SBX_SECCOMP_FILTER", kind: "string" },
    allowNoSeccomp: { variable: "SBX_ALLOW_NO_SECCOMP", kind: "boolean" },
    admission: { variable: "SBX_ADMISSION", kind: "string" },
    admissionQueueSize: { variable: "SBX_ADMISSION_QUEUE_SIZE", kind: "integer" },
    admissionTimeoutMs: { variable: "SBX_ADMISSION_TIMEOUT_MS", kind: "integer" },
    vcpuOvercommit: { variable: "SBX_VCPU_OVERCOMMIT", kind: "number" },
    memoryOvercommit: { variable: "SBX_MEMORY_OVERCOMMIT", kind: "number" },
    balloonMemoryOvercommit: { variable: "SBX_BALLOON_MEMORY_OVERCOMMIT", kind: "number" },
    hostVcpus: { variable: "SBX_HOST_VCPUS", kind: "integer" },
    hostMemoryMib: { variable: "SBX_HOST_MEMORY_MIB", kind: "integer" },
    reservedVcpus: { variable: "SBX_RESERVED_VCPUS", kind: "integer" },
    reservedMemoryMib: { variable: "SBX_RESERVED_MEMORY_MIB", kind: "integer" },
  });

export interface ConfigIssue {
  option: string;
  /** Set when the value came from the environment. */
  variable?: string;
  value: unknown;
  message: string;
}

function invalid(issues: ConfigIssue[]): OrchestratorError {
  const lines = issues.map((issue) => {
    const where = issue.variable ?? issue.option;
    return `  ${where}=${JSON.stringify(issue.value)}: ${issue.message}`;
  });
  return new OrchestratorError(
    "CONFIG_INVALID",
    `${issues.length} invalid configuration value${issues.length === 1 ? "" : "s"}:\n${lines.join("\n")}`,
    { details: { issues } },
  );
}

/** `FC_CPU_TEMPLATE` / `FC_CUSTOM_CPU_TEMPLATE_PATH` through @sbx/cpu-template's one parser (case, arch, conflicts). */
function resolveCpuTemplate(
  options: { cpuTemplate?: string | undefined; customCpuTemplatePath?: string | undefined },
  arch: Arch,
  report: (option: OptionName, message: string) => void,
): CpuTemplateChoice {
  try {
    const setting = parseCpuTemplateSetting(
      {
        ...(options.cpuTemplate === undefined ? {} : { cpuTemplate: options.cpuTemplate }),
        ...(options.customCpuTemplatePath === undefined
          ? {}
          : { customCpuTemplatePath: options.customCpuTemplatePath }),
      },
      arch,
    );
    if (setting.kind === "static")
      return { kind: "static", name: setting.name, deprecation: setting.deprecation };
    return setting;
  } catch (error) {
    if (!(error instanceof CpuTemplateError)) throw error;
    report("cpuTemplate", error.message);
    return { kind: "none" };
  }
}

function resolveConfig(
  input: Record<string, unknown>,
  sourceOf: (option: string) => string | undefined,
  preIssues: ConfigIssue[] = [],
): OrchestratorConfig {
  const issues = [...preIssues];
  const report = (option: string, message: string, value: unknown = input[option]) => {
    const variable = sourceOf(option);
    issues.push({ option, ...(variable === undefined ? {} : { variable }), value, message });
  };
  const parsed = orchestratorOptionsSchema.safeParse(input);
  let options: z.output<typeof orchestratorOptionsSchema> = {};
  if (parsed.success) {
    options = parsed.data;
  } else {
    const bad = new Set<string>();
    for (const issue of parsed.error.issues) {
      const option = String(issue.path[0] ?? "");
      bad.add(option);
      report(option, issue.message);
    }
    // Keep checking the rest, so one run reports every bad value.
    const good = Object.fromEntries(Object.entries(input).filter(([key]) => !bad.has(key)));
    options = orchestratorOptionsSchema.parse(good);
  }

  let targetArch: Arch = hostArch();
  if (options.targetArch !== undefined && options.targetArch.trim() !== "") {
    try {
      targetArch = normalizeArch(options.targetArch, { strict: true });
    } catch {
      report("targetArch", `unknown architecture; use one of ${ACCEPTED_ARCH_NAMES.join(", ")}`);
    }
  }
  const cpuTemplate = resolveCpuTemplate(options, targetArch, report);

  const archDefaults = ARCH_DEFAULTS[targetArch];
  const config: Omit<OrchestratorConfig, "addresses"> = {
    targetArch,
    cpuTemplate,
    staticCpuTemplatesDir: options.staticCpuTemplatesDir,
    busyboxDir: options.busyboxDir ?? CONFIG_DEFAULTS.busyboxDir,
    busyboxVersion: options.busyboxVersion ?? CONFIG_DEFAULTS.busyboxVersion,
    firecrackerRoot: options.firecrackerRoot ?? CONFIG_DEFAULTS.firecrackerRoot,
    firecrackerVersion: options.firecrackerVersion ?? CONFIG_DEFAULTS.firecrackerVersion,
    firecrackerBin: options.firecrackerBin,
    jailerBin: options.jailerBin,
    unjailed: options.unjailed ?? false,
    jailChrootBaseDir: options.jailChrootBaseDir,
    jailUidRange: options.jailUidRange ?? CONFIG_DEFAULTS.jailUidRange,
    jailCgroupVersion: options.jailCgroupVersion,
    jailParentCgroup: options.jailParentCgroup ?? CONFIG_DEFAULTS.jailParentCgroup,
    kernelRoot: options.kernelRoot ?? CONFIG_DEFAULTS.kernelRoot,
    kernelVersion: options.kernelVersion ?? CONFIG_DEFAULTS.kernelVersion,
    kernelName: options.kernelName ?? archDefaults.kernelName,
    stateDir: options.stateDir ?? CONFIG_DEFAULTS.stateDir,
    maxSandboxes: options.maxSandboxes ?? CONFIG_DEFAULTS.maxSandboxes,
    maxConcurrentCreates: options.maxConcurrentCreates ?? CONFIG_DEFAULTS.maxConcurrentCreates,
    maxConcurrentBuilds: options.maxConcurrentBuilds ?? CONFIG_DEFAULTS.maxConcurrentBuilds,
    readyTimeoutMs: options.readyTimeoutMs ?? archDefaults.readyTimeoutMs,
    provisioningTimeoutMs: options.provisioningTimeoutMs ?? archDefaults.provisioningTimeoutMs,
    waitLogIntervalMs: options.waitLogIntervalMs ?? CONFIG_DEFAULTS.waitLogIntervalMs,
    hostAddressPool: options.hostAddressPool ?? CONFIG_DEFAULTS.hostAddressPool,
    tapName: options.tapName ?? CONFIG_DEFAULTS.tapName,
    tapAddress: options.tapAddress ?? CONFIG_DEFAULTS.tapAddress,
    guestAddress: options.guestAddress ?? CONFIG_DEFAULTS.guestAddress,
    networkPoolSize: options.networkPoolSize ?? CONFIG_DEFAULTS.networkPoolSize,
    unpackMaxBytes: options.unpackMaxBytes ?? CONFIG_DEFAULTS.unpackMaxBytes,
    unpackMaxEntries: options.unpackMaxEntries ?? CONFIG_DEFAULTS.unpackMaxEntries,
    unpackMaxPathDepth: options.unpackMaxPathDepth ?? CONFIG_DEFAULTS.unpackMaxPathDepth,
    firewallTable: options.firewallTable ?? CONFIG_DEFAULTS.firewallTable,
    dnsServers: options.dnsServers,
    publishPortRange: options.publishPortRange ?? CONFIG_DEFAULTS.publishPortRange,
    egressPolicy: options.egressPolicy,
    useMemfd: options.useMemfd ?? (CONFIG_DEFAULTS.useMemfd as UseMemfdMode),
    seccompFilter: options.seccompFilter,
    allowNoSeccomp: options.allowNoSeccomp ?? false,
    admission: options.admission ?? (CONFIG_DEFAULTS.admission as AdmissionMode),
    admissionQueueSize: options.admissionQueueSize ?? CONFIG_DEFAULTS.admissionQueueSize,
    admissionTimeoutMs: options.admissionTimeoutMs ?? CONFIG_DEFAULTS.admissionTimeoutMs,
    vcpuOvercommit: options.vcpuOvercommit ?? CONFIG_DEFAULTS.vcpuOvercommit,
    memoryOvercommit: options.memoryOvercommit ?? CONFIG_DEFAULTS.memoryOvercommit,
    balloonMemoryOvercommit: options.balloonMemoryOvercommit ?? CONFIG_DEFAULTS.balloonMemoryOvercommit,
    hostVcpus: options.hostVcpus,
    hostMemoryMib: options.hostMemoryMib,
    reservedVcpus: options.reservedVcpus ?? CONFIG_DEFAULTS.reservedVcpus,
    reservedMemoryMib: options.reservedMemoryMib,
  };

  if (config.maxConcurrentCreates > config.maxSandboxes && options.maxConcurrentCreates !== undefined) {
    report("maxConcurrentCreates", `is larger than maxSandboxes (${config.maxSandboxes}); lower it`);
  }
  const addresses = checkNetwork(config, options, report);

  if (issues.length > 0 || !addresses) throw invalid(issues);
  return Object.freeze({ ...config, addresses: Object.freeze(addresses) });
}

/** `40000-40999` → `{ from: 40000, to: 40999 }` (the config has validated it). */
export function parsePortRange(text: string): { from: number; to: number } {
  const [from, to] = text.split("-").map(Number) as [number, number];
  return { from, to };
}

/** Checks the network settings together, reporting each problem; the parsed addresses when they hold. */
function checkNetwork(
  config: Pick<OrchestratorConfig, "hostAddressPool" | "tapAddress" | "guestAddress">,
  options: z.output<typeof orchestratorOptionsSchema>,
  report: (option: string, message: string) => void,
): ParsedAddresses | undefined {
  const pool = parseCidr(config.hostAddressPool, { strict: true });
  if (!pool) {
    report("hostAddressPool", "host bits must be zero (write the network address, e.g. 10.200.0.0/16)");
  } else if (pool.prefixLength < 8 || pool.prefixLength > 30) {
    report("hostAddressPool", "prefix must be between /8 and /30: each sandbox takes a /30 from it");
  }
  const tap = parseCidr(config.tapAddress);
  const guest = parseIpv4(config.guestAddress);
  if (!tap || guest === undefined) return undefined;
  const tapAddress = parseIpv4(config.tapAddress.split("/")[0] ?? "");
  if (tap.prefixLength > 30) {
    report("tapAddress", "prefix must be /30 or shorter, so the TAP and the guest fit in one subnet");
  } else if (!cidrContains(tap, guest)) {
    report(
      options.guestAddress !== undefined ? "guestAddress" : "tapAddress",
      `guest address ${config.guestAddress} is not in the TAP subnet ${config.tapAddress}`,
    );
  } else if (guest === tapAddress) {
    report("guestAddress", "must differ from the TAP address");
  }
  if (pool && cidrsOverlap(pool, tap)) {
    report("hostAddressPool", `overlaps the TAP subnet ${config.tapAddress}; pick disjoint ranges`);
  }
  if (!pool || tapAddress === undefined) return undefined;
  return {
    hostAddressPool: pool,
    tapSubnet: tap,
    tapAddress: formatIpv4(tapAddress),
    guestAddress: formatIpv4(guest),
  };
}

/** Validates plain options and fills every default; throws CONFIG_INVALID listing every bad value. */
export function createConfig(options: OrchestratorOptions = {}): OrchestratorConfig {
  return resolveConfig({ ...options }, () => undefined);
}

/**
 * Reads the configuration from environment variables (CONFIG_ENV_VARIABLES). Empty values count as
 * unset. `overrides` are plain options that win over the environment. Every bad value is reported at
 * once, each with its variable name.
 */
export function configFromEnv(
  env: Readonly<Record<string, string | undefined>> = process.env,
  overrides: OrchestratorOptions = {},
): OrchestratorConfig {
  const input: Record<string, unknown> = {};
  const fromEnv = new Map<string, string>();
  const preIssues: ConfigIssue[] = [];
  for (const [option, { variable, kind }] of Object.entries(CONFIG_ENV_VARIABLES)) {
    const raw = env[variable]?.trim();
    if (raw === undefined || raw === "") continue;
    fromEnv.set(option, variable);
    if (kind === "integer") {
      if (!/^\d+$/.test(raw)) {
        preIssues.push({ option, variable, value: raw, message: "must be a whole number" });
        continue;
      }
      input[option] = Number(raw);
    } else if (kind === "number") {
      if (!/^\d+(\.\d+)?$/.test(raw)) {
        preIssues.push({ option, variable, value: raw, message: "must be a number like 4 or 1.5" });
        continue;
      }
      input[option] = Number(raw);
    } else if (kind === "boolean") {
      const value = { "1": true, true: true, yes: true, "0": false, false: false, no: false }[
        raw.toLowerCase()
      ];
      if (value === undefined) {
        preIssues.push({ option, variable, value: raw, message: "must be 1/true/yes or 0/false/no" });
        continue;
      }
      input[option] = value;
    } else {
      input[option] = raw;
    }
  }
  for (const [option, value] of Object.entries(overrides)) {
    if (value === undefined) continue;
    input[option] = value;
    fromEnv.delete(option);
  }
  return resolveConfig(input, (option) => fromEnv.get(option), preIssues);
}
