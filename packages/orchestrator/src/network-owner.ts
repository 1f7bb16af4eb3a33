// Every host veth sbx creates names its owner in the link's alias: the process that created it (pid,
// start time, pid namespace), the network namespace its peer lives in and the nftables table that
// holds its rules. A sandbox never outlives the process that owns it, so once that process is gone the
// network is garbage, whoever finds it. The record travels with the kernel object, so it is still
// there when the state directory that also names the network was deleted after a crash.
import { readlink } from "node:fs/promises";
import { z } from "zod";
import { FIREWALL_TABLE_NAME } from "./nftables.ts";
import { readProcStat } from "./process-identity.ts";

/** An `ip netns` name sbx accepts. */
export const NAMESPACE_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

const TAG_PREFIX = "sbx-owner/1";
/** Linux keeps at most 255 bytes of an interface alias (IFALIASZ - 1). */
const MAX_ALIAS_BYTES = 255;

/** What the host veth's alias records: fields are validated, since any root process can write one. */
export const networkOwnerTagSchema = z.object({
  pid: z.coerce.number().int().positive(),
  startTime: z.string().regex(/^\d{1,20}$/),
  /** The inode of the creator's pid namespace: a pid means something only in its own namespace. */
  pidNamespace: z.string().regex(/^\d{1,20}$/),
  /** The `ip netns` name of the namespace the veth's peer was created in. */
  namespace: z.string().regex(NAMESPACE_NAME),
  firewallTable: z.string().regex(FIREWALL_TABLE_NAME).optional(),
});
export type NetworkOwnerTag = z.infer<typeof networkOwnerTagSchema>;

/** The fields of a tag that say which process owns a network. */
export type NetworkOwnerProcess = Pick<NetworkOwnerTag, "pid" | "startTime" | "pidNamespace">;

// Short keys and no spaces or quotes: the alias goes through `ip -batch`, whose words split on blanks.
const KEYS = {
  pid: "pid",
  startTime: "start",
  pidNamespace: "pidns",
  namespace: "netns",
  firewallTable: "table",
} as const satisfies Record<keyof NetworkOwnerTag, string>;

/** `sbx-owner/1;pid=…;start=…;pidns=…;netns=…[;table=…]`. */
export function formatOwnerTag(tag: NetworkOwnerTag): string {
  const valid = networkOwnerTagSchema.parse(tag);
  const fields = (Object.keys(KEYS) as (keyof NetworkOwnerTag)[])
    .filter((key) => valid[key] !== undefined)
    .map((key) => `${KEYS[key]}=${valid[key]}`);
  const alias = [TAG_PREFIX, ...fields].join(";");
  if (Buffer.byteLength(alias) > MAX_ALIAS_BYTES)
    throw new RangeError(`owner tag longer than ${MAX_ALIAS_BYTES} bytes`);
  return alias;
}

/** The tag in an interface alias, or undefined for any alias that is not a well-formed sbx tag. */
export function parseOwnerTag(alias: string | undefined): NetworkOwnerTag | undefined {
  if (!alias?.startsWith(`${TAG_PREFIX};`) || Buffer.byteLength(alias) > MAX_ALIAS_BYTES) return undefined;
  const fields = new Map<string, string>();
  for (const field of alias.slice(TAG_PREFIX.length + 1).split(";")) {
    const equals = field.indexOf("=");
    if (equals <= 0 || fields.has(field.slice(0, equals))) return undefined;
    fields.set(field.slice(0, equals), field.slice(equals + 1));
  }
  const raw = Object.fromEntries(
    (Object.entries(KEYS) as [keyof NetworkOwnerTag, string][]).map(([key, short]) => [
      key,
      fields.get(short),
    ]),
  );
  if (fields.size !== Object.values(raw).filter((value) => value !== undefined).length) return undefined;
  const parsed = networkOwnerTagSchema.safeParse(raw);
  return parsed.success ? parsed.data : undefined;
}

async function pidNamespaceOf(pid: number | "self"): Promise<string | undefined> {
  try {
    return /^pid:\[(\d+)\]$/.exec(await readlink(`/proc/${pid}/ns/pid`))?.[1];
  } catch {
    return undefined;
  }
}

let current: Promise<NetworkOwnerProcess> | undefined;

/** This process, as a tag names it. */
export function currentOwnerProcess(): Promise<NetworkOwnerProcess> {
  current ??= (async () => {
    const [stat, pidNamespace] = await Promise.all([readProcStat(process.pid), pidNamespaceOf("self")]);
    if (!stat || !pidNamespace) throw new Error("cannot read this process's /proc entry");
    return { pid: process.pid, startTime: stat.startTime, pidNamespace };
  })();
  current.catch(() => {
    current = undefined;
  });
  return current;
}

/**
 * Whether the tag's owner still runs, seen from this process: "alive", "gone", or "unknown" when the
 * tag was written in another pid namespace (its pid names some other process here, or none).
 */
export async function ownerState(tag: NetworkOwnerProcess): Promise<"alive" | "gone" | "unknown"> {
  const self = await currentOwnerProcess();
  if (tag.pidNamespace !== self.pidNamespace) return "unknown";
  const stat = await readProcStat(tag.pid);
  if (!stat || stat.state === "Z" || stat.state === "X" || stat.startTime !== tag.startTime) return "gone";
  return "alive";
}
