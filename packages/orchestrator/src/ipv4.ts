/** IPv4 arithmetic for the address pool and config validation; addresses are unsigned 32-bit numbers. */

export interface Ipv4Cidr {
  /** The network address (host bits cleared). */
  network: number;
  prefixLength: number;
}

const OCTET = /^(0|[1-9]\d{0,2})$/;

/** Parses dotted-quad notation; `undefined` for anything else (no octal, no shorthand). */
export function parseIpv4(text: string): number | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  let value = 0;
  for (const part of parts) {
    if (!OCTET.test(part)) return undefined;
    const octet = Number(part);
    if (octet > 255) return undefined;
    value = value * 256 + octet;
  }
  return value;
}

export function formatIpv4(value: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join(".");
}

/** Parses `a.b.c.d/n`. With `strict`, host bits must be zero (`10.200.0.0/16`, not `10.200.0.1/16`). */
export function parseCidr(text: string, options: { strict?: boolean } = {}): Ipv4Cidr | undefined {
  const [address, prefix, extra] = text.split("/");
  if (address === undefined || prefix === undefined || extra !== undefined) return undefined;
  if (!/^\d{1,2}$/.test(prefix)) return undefined;
  const prefixLength = Number(prefix);
  const value = parseIpv4(address);
  if (value === undefined || prefixLength > 32) return undefined;
  const network = networkOf(value, prefixLength);
  if (options.strict && network !== value) return undefined;
  return { network, prefixLength };
}

export function blockSize(prefixLength: number): number {
  return 2 ** (32 - prefixLength);
}

export function networkOf(address: number, prefixLength: number): number {
  const size = blockSize(prefixLength);
  return Math.floor(address / size) * size;
}

export function cidrContains(cidr: Ipv4Cidr, address: number): boolean {
  return networkOf(address, cidr.prefixLength) === cidr.network;
}

export function cidrsOverlap(a: Ipv4Cidr, b: Ipv4Cidr): boolean {
  const shorter = Math.min(a.prefixLength, b.prefixLength);
  return networkOf(a.network, shorter) === networkOf(b.network, shorter);
}

export function formatCidr(cidr: Ipv4Cidr): string {
  return `${formatIpv4(cidr.network)}/${cidr.prefixLength}`;
}
