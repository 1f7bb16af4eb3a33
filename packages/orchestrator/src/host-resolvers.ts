// The guest's DNS resolvers default to the host's upstream ones. A loopback resolver (systemd-resolved's
// 127.0.0.53 stub, a local dnsmasq) is useless to a guest, which cannot reach the host's loopback, so
// systemd-resolved's list of real upstreams is read instead when it exists.
import { readFile } from "node:fs/promises";
import { parseIpv4 } from "./ipv4.ts";

export const RESOLV_CONF_PATHS = Object.freeze(["/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"]);

/** `nameserver` IPv4 addresses of a resolv.conf text, loopback ones left out, in order. */
export function parseNameservers(text: string): string[] {
  const servers: string[] = [];
  for (const line of text.split("\n")) {
    const match = /^\s*nameserver\s+(\S+)/.exec(line);
    const address = match?.[1];
    if (address === undefined) continue;
    const value = parseIpv4(address);
    // 127.0.0.0/8 and 0.0.0.0 mean "this host": unreachable from a guest.
    if (value === undefined || value === 0 || Math.floor(value / 2 ** 24) === 127) continue;
    if (!servers.includes(address)) servers.push(address);
  }
  return servers;
}

/**
 * At most two (the kernel's ip= carries two) upstream IPv4 resolvers of the host: the first file of
 * `paths` that names any. Empty when none does; the guest then gets no resolv.conf from sbx.
 */
export async function hostResolvers(paths: readonly string[] = RESOLV_CONF_PATHS): Promise<string[]> {
  for (const path of paths) {
    let text: string;
    try {
      text = await readFile(path, "utf8");
    } catch {
      continue;
    }
    const servers = parseNameservers(text);
    if (servers.length > 0) return servers.slice(0, 2);
  }
  return [];
}

/**
 * The resolvers a guest gets (kernel `ip=` dns fields, written to /etc/resolv.conf by the init) and
 * that every egress policy lets through on port 53: the configured ones, else the host's upstream ones.
 */
export async function guestResolvers(config: {
  dnsServers: readonly string[] | undefined;
}): Promise<string[]> {
  return config.dnsServers ? [...config.dnsServers] : await hostResolvers();
}
