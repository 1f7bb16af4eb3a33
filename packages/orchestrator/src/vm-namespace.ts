// Firecracker reopens a snapshot's block devices by the exact paths they had when the template was
// built, and its TAP by name. Every VM therefore runs in its sandbox's network namespace and in a
// private mount namespace where the template's disk path is bind-mounted to this VM's own copy.
import { isAbsolute } from "node:path";
import { OrchestratorError } from "./errors.ts";

export interface BindMount {
  /** This VM's file (e.g. the sandbox's copy-on-write rootfs). */
  source: string;
  /** The path Firecracker is told (and a snapshot remembers); it must exist on the host. */
  target: string;
}

export interface VmNamespaceOptions {
  /** An `ip netns` name; the VM sees only that namespace's interfaces. */
  networkNamespace?: string;
  binds?: readonly BindMount[];
}

/** `binary` and `binaryArgs` for `launchFirecracker`: exec chains keep Firecracker's pid stable. */
export interface WrappedLaunch {
  binary: string;
  binaryArgs: string[];
}

// Paths travel as arguments, never inside the script text. Each bind is `source target`; `--` ends them.
const BIND_AND_EXEC =
  'while [ "$1" != "--" ]; do mount --bind "$1" "$2" || exit 127; shift 2; done; shift; exec "$@"';

const NAMESPACE_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

export function wrapInVmNamespaces(firecrackerBinary: string, options: VmNamespaceOptions): WrappedLaunch {
  const binds = options.binds ?? [];
  for (const { source, target } of binds) {
    for (const path of [source, target]) {
      if (!isAbsolute(path) || path.includes("\0") || path === "--") {
        throw new OrchestratorError("INVALID_OPTIONS", `bind-mount paths must be absolute: "${path}"`);
      }
    }
  }
  if (options.networkNamespace !== undefined && !NAMESPACE_NAME.test(options.networkNamespace)) {
    throw new OrchestratorError("INVALID_OPTIONS", `invalid network namespace "${options.networkNamespace}"`);
  }
  const mountArgs =
    binds.length === 0
      ? []
      : [
          "/usr/bin/unshare",
          "--mount",
          // slave: the host's unmounts (e.g. `ip netns del`) still reach this namespace; its binds stay inside.
          "--propagation",
          "slave",
          "--",
          "/bin/sh",
          "-c",
          BIND_AND_EXEC,
          "sbx-vm-mounts",
          ...binds.flatMap((b) => [b.source, b.target]),
          "--",
        ];
  const chain = [...mountArgs, firecrackerBinary];
  if (options.networkNamespace !== undefined) {
    return {
      binary: "/usr/bin/nsenter",
      binaryArgs: [`--net=/run/netns/${options.networkNamespace}`, "--", ...chain],
    };
  }
  const [binary, ...binaryArgs] = chain as [string, ...string[]];
  return { binary, binaryArgs };
}
