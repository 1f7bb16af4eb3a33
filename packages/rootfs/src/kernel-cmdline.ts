import { type Arch, archSchema } from "@sbx/arch";
import { z } from "zod";
import { RootfsError } from "./errors.ts";
import { GUEST_INIT } from "./guest-files.ts";

const ipv4 = z.ipv4();
// RFC 1123 host name; the kernel's ip= copies at most __NEW_UTS_LEN (64) bytes.
const hostname = z
  .string()
  .max(64)
  .regex(
    /^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/,
    "an RFC 1123 host name",
  );
// IFNAMSIZ is 16 including the NUL.
const device = z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, "a network interface name (1-15 characters)");
const word = z.string().regex(/^[^\s"]+$/, "one command-line word (no spaces or quotes)");

export const kernelNetworkSchema = z
  .object({
    /** The guest's address. */
    clientIp: ipv4,
    /** Default gateway (the host side of the TAP device). */
    gatewayIp: ipv4.optional(),
    /** Dotted netmask, e.g. 255.255.255.252; or give prefixLength. */
    netmask: ipv4.optional(),
    prefixLength: z.number().int().min(0).max(32).optional(),
    /** NFS server field of ip=; empty for sbx. */
    serverIp: ipv4.optional(),
    hostname: hostname.optional(),
    device: device.default("eth0"),
    /** Up to two DNS servers (ip= fields dns0-ip and dns1-ip). */
    dns: z.array(ipv4).max(2).default([]),
  })
  .refine((n) => !(n.netmask !== undefined && n.prefixLength !== undefined), {
    message: "give netmask or prefixLength, not both",
  });
/** The guest's network for the kernel command line (`ip=` for kernels with IP_PNP). */
export type KernelNetwork = z.input<typeof kernelNetworkSchema>;

export const kernelCmdlineOptionsSchema = z.object({
  arch: archSchema,
  /** Default /.sbx/init (what injectGuestFiles installs). */
  init: z
    .string()
    .regex(/^\/[^\s]*$/, "an absolute path without spaces")
    .default(GUEST_INIT),
  console: word.default("ttyS0"),
  network: kernelNetworkSchema.optional(),
  /** Guest host name (`sbx.hostname=`); for a name inside `ip=` use `network.hostname`. */
  hostname: hostname.optional(),
  /** Host wall-clock time in seconds; init sets the guest clock from `sbx.epoch=`. */
  epochSeconds: z.number().int().nonnegative().optional(),
  /** Boot into the provisioning runner (`sbx.provision=1`) instead of the workload. */
  provision: z.boolean().default(false),
  /** Set when Firecracker runs with PCI enabled (--enable-pci); otherwise amd64 gets pci=off. */
  pci: z.boolean().default(false),
  /** root= and friends are normally added by Firecracker for the root drive; set to override. */
  root: word.optional(),
  /** More parameters, appended in order. */
  extra: z.array(word).default([]),
});
/** What `buildKernelCmdline` puts on the kernel command line: arch, console, init, network, extra arguments. */
export type KernelCmdlineOptions = z.input<typeof kernelCmdlineOptionsSchema>;

/** Dotted netmask for a prefix length: 30 → 255.255.255.252. */
export function prefixToNetmask(prefix: number): string {
  const bits = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return [24, 16, 8, 0].map((shift) => (bits >>> shift) & 0xff).join(".");
}

/**
 * The kernel's `ip=` value (Documentation/admin-guide/nfs/nfsroot.rst):
 * `<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>`,
 * with autoconf `off` (static); trailing empty DNS fields are dropped.
 */
export function formatIpParameter(input: KernelNetwork): string {
  const parsed = kernelNetworkSchema.safeParse(input);
  if (!parsed.success) {
    throw new RootfsError("INVALID_OPTIONS", `kernel ip=: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
    });
  }
  const n = parsed.data;
  const netmask = n.netmask ?? (n.prefixLength === undefined ? "" : prefixToNetmask(n.prefixLength));
  const fields = [
    n.clientIp,
    n.serverIp ?? "",
    n.gatewayIp ?? "",
    netmask,
    n.hostname ?? "",
    n.device,
    "off",
    n.dns[0] ?? "",
    n.dns[1] ?? "",
  ];
  while (fields.length > 7 && fields[fields.length - 1] === "") fields.pop();
  return fields.join(":");
}

/** Splits an `ip=` value into its named fields (the inverse of formatIpParameter). */
export function parseIpParameter(value: string): {
  clientIp: string;
  serverIp: string;
  gatewayIp: string;
  netmask: string;
  hostname: string;
  device: string;
  autoconf: string;
  dns0: string;
  dns1: string;
  ntp0: string;
} {
  if (/^(off|none|on|any|dhcp|bootp|rarp|both)$/.test(value)) {
    return {
      clientIp: "",
      serverIp: "",
      gatewayIp: "",
      netmask: "",
      hostname: "",
      device: "",
      autoconf: value,
      dns0: "",
      dns1: "",
      ntp0: "",
    };
  }
  const f = value.split(":");
  return {
    clientIp: f[0] ?? "",
    serverIp: f[1] ?? "",
    gatewayIp: f[2] ?? "",
    netmask: f[3] ?? "",
    hostname: f[4] ?? "",
    device: f[5] ?? "",
    autoconf: f[6] ?? "",
    dns0: f[7] ?? "",
    dns1: f[8] ?? "",
    ntp0: f[9] ?? "",
  };
}

/**
 * The guest kernel command line for Firecracker: `console=<tty> reboot=k panic=1`, `pci=off` on
 * amd64 unless PCI is enabled (arm64 has no such parameter), `ip=` in the kernel's format (applied
 * by kernels with IP_PNP, and by /.sbx/init from userspace otherwise), `init=`, `sbx.epoch=` for
 * the guest clock and `sbx.provision=1` for the provisioning boot.
 */
export function buildKernelCmdline(input: KernelCmdlineOptions): string {
  const parsed = kernelCmdlineOptionsSchema.safeParse(input);
  if (!parsed.success) {
    throw new RootfsError("INVALID_OPTIONS", `buildKernelCmdline: ${z.prettifyError(parsed.error)}`, {
      cause: parsed.error,
    });
  }
  const o = parsed.data;
  const arch: Arch = o.arch;
  const params = [`console=${o.console}`, "reboot=k", "panic=1"];
  if (arch === "amd64" && !o.pci) params.push("pci=off");
  if (o.root !== undefined) params.push(`root=${o.root}`);
  if (o.network) params.push(`ip=${formatIpParameter(o.network)}`);
  params.push(`init=${o.init}`);
  if (o.hostname !== undefined) params.push(`sbx.hostname=${o.hostname}`);
  if (o.epochSeconds !== undefined) params.push(`sbx.epoch=${o.epochSeconds}`);
  if (o.provision) params.push("sbx.provision=1");
  params.push(...o.extra);
  return params.join(" ");
}
