import { constants } from "node:fs";
import { access, open, readFile, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { type Arch, hostArch, hostKernelRelease, uffdWriteProtectSupported } from "@sbx/arch";
import { readJailerAndFirecrackerVersions } from "@sbx/fc-client";
import {
  firecrackerVersionOf,
  resolveBusyboxArtifact,
  resolveFirecrackerBinary,
  resolveKernel,
} from "./boot-parameters.ts";
import { checkCapacity } from "./capacity-doctor.ts";
import type { OrchestratorConfig } from "./config.ts";
import { directoryClones } from "./disk-clone.ts";
import { runCommand } from "./exec.ts";
import { jailLayout, resolveJailerBinary } from "./jail-plan.ts";
import { checkOrphanedNetworks } from "./orphaned-networks.ts";
import { checkBuildStore } from "./store-doctor.ts";

export type DoctorStatus = "ok" | "warn" | "fail";

/** One `sbx doctor` finding: ok, warn or fail, what was seen, and the fix. */
export interface DoctorCheck {
  id: string;
  status: DoctorStatus;
  /** What was found. */
  summary: string;
  /** How to fix it; present for warn and fail. */
  fix?: string;
}

/** Where the doctor looks; tests point it elsewhere. */
export interface DoctorHost {
  kvmPath: string;
  unprivilegedUserfaultfdPath: string;
  devUserfaultfdPath: string;
  meminfoPath: string;
  isRoot: boolean;
  hostArch: Arch;
  kernelRelease: () => string;
  /** Where the store and chunk cache settings come from (SBX_STORE_URL, AWS_*, SBX_CHUNK_CACHE_*). */
  env: Record<string, string | undefined>;
}

export function defaultDoctorHost(): DoctorHost {
  return {
    kvmPath: "/dev/kvm",
    unprivilegedUserfaultfdPath: "/proc/sys/vm/unprivileged_userfaultfd",
    devUserfaultfdPath: "/dev/userfaultfd",
    meminfoPath: "/proc/meminfo",
    isRoot: process.getuid?.() === 0,
    hostArch: hostArch(),
    kernelRelease: () => hostKernelRelease().raw,
    env: process.env,
  };
}

function errorCode(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException).code;
}

async function checkKvm(host: DoctorHost): Promise<DoctorCheck> {
  try {
    const info = await stat(host.kvmPath);
    if (!info.isCharacterDevice()) {
      return {
        id: "kvm",
        status: "fail",
        summary: `${host.kvmPath} is not a character device`,
        fix: "remove it and load the kvm module (modprobe kvm_intel or kvm_amd)",
      };
    }
    const handle = await open(host.kvmPath, "r+");
    await handle.close();
    return { id: "kvm", status: "ok", summary: `${host.kvmPath} is usable` };
  } catch (error) {
    if (errorCode(error) === "ENOENT") {
      return {
        id: "kvm",
        status: "fail",
        summary: `${host.kvmPath} does not exist`,
        fix: "enable virtualization in the firmware (or nested virtualization on a cloud VM) and load kvm_intel / kvm_amd",
      };
    }
    return {
      id: "kvm",
      status: "fail",
      summary: `${host.kvmPath} cannot be opened read-write (${errorCode(error) ?? (error as Error).message})`,
      fix: "add the user to the kvm group (usermod -aG kvm $USER, then log in again) or run as root",
    };
  }
}

async function checkUserfaultfd(host: DoctorHost, config: OrchestratorConfig): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  let sysctl: string | undefined;
  try {
    sysctl = (await readFile(host.unprivilegedUserfaultfdPath, "utf8")).trim();
  } catch {
    sysctl = undefined;
  }
  let devAccess = false;
  try {
    await access(host.devUserfaultfdPath, constants.R_OK | constants.W_OK);
    devAccess = true;
  } catch {
    devAccess = false;
  }
  if (host.isRoot || sysctl === "1" || devAccess) {
    const how = host.isRoot
      ? "running as root"
      : sysctl === "1"
        ? "vm.unprivileged_userfaultfd=1"
        : `${host.devUserfaultfdPath} is accessible`;
    checks.push({ id: "userfaultfd", status: "ok", summary: `userfaultfd is available (${how})` });
  } else {
    checks.push({
      id: "userfaultfd",
      status: "fail",
      summary: `userfaultfd is not available to this user (vm.unprivileged_userfaultfd=${sysctl ?? "unknown"}, no access to ${host.devUserfaultfdPath})`,
      fix: "run as root, or sysctl -w vm.unprivileged_userfaultfd=1, or grant the user access to /dev/userfaultfd (Linux 6.1+)",
    });
  }
  try {
    const support = uffdWriteProtectSupported({
      arch: config.targetArch,
      release: host.kernelRelease(),
      backing: "anonymous",
    });
    checks.push(
      support.supported
        ? { id: "uffd-write-protect", status: "ok", summary: support.reason }
        : {
            id: "uffd-write-protect",
            status: "warn",
            summary: support.reason,
            fix: "diff snapshots fall back to Firecracker's own dirty-page tracking; upgrade the host kernel for write-protect tracking",
          },
    );
  } catch (error) {
    checks.push({
      id: "uffd-write-protect",
      status: "warn",
      summary: `cannot tell from the kernel release: ${(error as Error).message}`,
      fix: "check the host kernel version by hand (uname -r)",
    });
  }
  return checks;
}

async function checkHugepages(host: DoctorHost): Promise<DoctorCheck> {
  let meminfo: string;
  try {
    meminfo = await readFile(host.meminfoPath, "utf8");
  } catch (error) {
    return {
      id: "hugepages",
      status: "warn",
      summary: `cannot read ${host.meminfoPath}: ${(error as Error).message}`,
      fix: "only templates with hugePages: 2M need huge pages",
    };
  }
  const field = (name: string) =>
    Number(new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(meminfo)?.[1] ?? Number.NaN);
  const total = field("HugePages_Total");
  const free = field("HugePages_Free");
  const sizeKb = field("Hugepagesize");
  if (!(total > 0)) {
    return {
      id: "hugepages",
      status: "warn",
      summary: "no huge pages reserved (HugePages_Total: 0)",
      fix: "only needed for templates with hugePages: 2M; reserve them with sysctl -w vm.nr_hugepages=<count> (memoryMib / 2 per VM)",
    };
  }
  return {
    id: "hugepages",
    status: "ok",
    summary: `${free} of ${total} huge pages of ${sizeKb} kB free`,
  };
}

async function checkCommand(
  id: string,
  argv: string[],
  versionPattern: RegExp,
  fix: string,
): Promise<DoctorCheck> {
  try {
    const { stdout, stderr } = await runCommand(argv, { timeoutMs: 5_000 });
    const version = versionPattern.exec(`${stdout}\n${stderr}`)?.[1];
    return { id, status: "ok", summary: `${argv[0]} ${version ?? "(version unknown)"}` };
  } catch (error) {
    return { id, status: "fail", summary: (error as Error).message.split("\n")[0] ?? "", fix };
  }
}

async function checkE2fsprogs(): Promise<DoctorCheck[]> {
  const fix = "apt-get install e2fsprogs (mkfs.ext4 -d needs 1.43 or newer)";
  const mkfs = await checkCommand("e2fsprogs-mkfs", ["mkfs.ext4", "-V"], /mke2fs (\S+)/, fix);
  if (mkfs.status === "ok") {
    const version = /mkfs\.ext4 (\d+)\.(\d+)/.exec(mkfs.summary);
    if (version && (Number(version[1]) < 1 || (Number(version[1]) === 1 && Number(version[2]) < 43))) {
      mkfs.status = "fail";
      mkfs.fix = fix;
    }
  }
  const fsck = await checkCommand("e2fsprogs-fsck", ["e2fsck", "-V"], /e2fsck (\S+)/, fix);
  return [mkfs, fsck];
}

async function checkIp(host: DoctorHost): Promise<DoctorCheck> {
  const check = await checkCommand("iproute2", ["ip", "-V"], /iproute2-([\d.]+)/, "apt-get install iproute2");
  if (check.status === "ok" && !host.isRoot) {
    return {
      ...check,
      status: "warn",
      summary: `${check.summary}, but not running as root`,
      fix: "per-sandbox network namespaces need root or CAP_NET_ADMIN",
    };
  }
  return check;
}

function failureMessage(error: unknown): string {
  return (error as Error).message;
}

/** Sandbox networks on this host whose owner is gone (their veth's owner tag), of any state directory. */
async function checkSandboxNetworks(host: DoctorHost): Promise<DoctorCheck> {
  if (!host.isRoot) {
    return { id: "networks", status: "ok", summary: "not checked: listing sandbox networks needs root" };
  }
  try {
    return { id: "networks", ...(await checkOrphanedNetworks()) };
  } catch (error) {
    return {
      id: "networks",
      status: "warn",
      summary: `cannot list sandbox networks: ${failureMessage(error)}`,
      fix: "apt-get install iproute2",
    };
  }
}

async function checkFirecracker(config: OrchestratorConfig, host: DoctorHost): Promise<DoctorCheck> {
  const source = config.firecrackerBin ? "FIRECRACKER_BIN" : "the artifact root";
  let binary: { path: string; sha256: string };
  try {
    binary = await resolveFirecrackerBinary(config);
  } catch (error) {
    return {
      id: "firecracker",
      status: "fail",
      summary: `no usable Firecracker from ${source}: ${failureMessage(error)}`,
      fix: `set FIRECRACKER_BIN to an ${config.targetArch} Firecracker binary, or put one at ${config.firecrackerRoot}/${config.firecrackerVersion}/${config.targetArch}/firecracker (with a firecracker.sha256 sidecar)`,
    };
  }
  if (config.targetArch !== host.hostArch) {
    return {
      id: "firecracker",
      status: "ok",
      summary: `${binary.path} is a ${config.targetArch} binary (not run: this host is ${host.hostArch})`,
    };
  }
  const version = await firecrackerVersionOf(binary.path);
  if (!version) {
    return {
      id: "firecracker",
      status: "fail",
      summary: `${binary.path} did not print a Firecracker version`,
      fix: "point FIRECRACKER_BIN or the artifact root at a real Firecracker release binary",
    };
  }
  if (version !== config.firecrackerVersion) {
    return {
      id: "firecracker",
      status: "warn",
      summary: `${binary.path} is Firecracker ${version}, the configured version is ${config.firecrackerVersion}`,
      fix: `set FIRECRACKER_VERSION=${version}, or use a ${config.firecrackerVersion} binary; templates record the version and rebuild when it changes`,
    };
  }
  return {
    id: "firecracker",
    status: "ok",
    summary: `${binary.path} is Firecracker ${version} (${config.targetArch})`,
  };
}

async function checkKernel(config: OrchestratorConfig): Promise<DoctorCheck> {
  try {
    const kernel = await resolveKernel(config);
    return { id: "kernel", status: "ok", summary: `${kernel.path} boots on ${config.targetArch}` };
  } catch (error) {
    return {
      id: "kernel",
      status: "fail",
      summary: failureMessage(error),
      fix: `put a ${config.targetArch === "amd64" ? "vmlinux (uncompressed ELF)" : "PE-formatted Image"} at ${config.kernelRoot}/${config.kernelVersion}/${config.targetArch}/${config.kernelName}, or set KERNEL_DIR / KERNEL_VERSION / KERNEL_NAME`,
    };
  }
}

async function checkBusybox(config: OrchestratorConfig): Promise<DoctorCheck> {
  try {
    const busybox = await resolveBusyboxArtifact(config);
    return {
      id: "busybox",
      status: "ok",
      summary: `${busybox.path} is busybox ${busybox.version} for ${config.targetArch}, sha256 ${busybox.sha256.slice(0, 12)}… verified`,
    };
  } catch (error) {
    return {
      id: "busybox",
      status: "fail",
      summary: failureMessage(error),
      fix: `put a static ${config.targetArch} busybox ${config.busyboxVersion} at ${config.busyboxDir}/${config.busyboxVersion}/${config.targetArch}/busybox with a busybox.sha256 sidecar (sbx-fetch-busybox from @sbx/rootfs does both), or set HOST_BUSYBOX_DIR / BUSYBOX_VERSION`,
    };
  }
}

function checkArch(config: OrchestratorConfig, host: DoctorHost): DoctorCheck {
  if (config.targetArch === host.hostArch) {
    return { id: "arch", status: "ok", summary: `target arch ${config.targetArch} is the host's arch` };
  }
  return {
    id: "arch",
    status: "warn",
    summary: `target arch ${config.targetArch} differs from the host's ${host.hostArch}`,
    fix: `rootfs builds for ${config.targetArch} work here, but boot, snapshot and sandboxes refuse with ARCH_MISMATCH; unset TARGET_ARCH to target this host`,
  };
}

async function checkCpuTemplate(config: OrchestratorConfig): Promise<DoctorCheck> {
  const choice = config.cpuTemplate;
  if (choice.kind === "none") return { id: "cpu-template", status: "ok", summary: "no CPU template" };
  if (choice.kind === "static") {
    return {
      id: "cpu-template",
      status: "warn",
      summary: `static CPU template ${choice.name}, deprecated by Firecracker`,
      fix: choice.deprecation,
    };
  }
  try {
    JSON.parse(await readFile(choice.path, "utf8"));
    return { id: "cpu-template", status: "ok", summary: `custom CPU template ${choice.path}` };
  } catch (error) {
    return {
      id: "cpu-template",
      status: "fail",
      summary: `custom CPU template ${choice.path}: ${failureMessage(error)}`,
      fix: "point FC_CUSTOM_CPU_TEMPLATE_PATH at a readable Firecracker custom CPU template (JSON)",
    };
  }
}

async function checkStateDir(config: OrchestratorConfig): Promise<DoctorCheck> {
  let dir = config.stateDir;
  for (;;) {
    try {
      await access(dir, constants.W_OK | constants.X_OK);
      const exists = dir === config.stateDir;
      return {
        id: "state-dir",
        status: "ok",
        summary: exists ? `${config.stateDir} is writable` : `${config.stateDir} can be created`,
      };
    } catch (error) {
      if (errorCode(error) === "ENOENT" && dirname(dir) !== dir) {
        dir = dirname(dir);
        continue;
      }
      return {
        id: "state-dir",
        status: "fail",
        summary: `${dir} is not writable (${errorCode(error) ?? failureMessage(error)})`,
        fix: `create ${config.stateDir} writable by this user, or set SBX_STATE_DIR`,
      };
    }
  }
}

/**
 * The jailer every VM runs under and the Firecracker it launches, as a pair (a v1.7.0 jailer launches
 * v1.14.2 fine): found as the orchestrator finds it (JAILER_BIN, else next to Firecracker in
 * FIRECRACKER_DIR), or the explicit opt-out. No jailer and no opt-out fails: no VM would start.
 */
async function checkJailer(config: OrchestratorConfig): Promise<DoctorCheck> {
  if (config.unjailed)
    return {
      id: "jailer",
      status: "warn",
      summary:
        "SBX_UNJAILED=1: Firecracker runs unjailed, as root, without chroot, own uid or cgroup limits (it still dies with its owner)",
      fix: "unset SBX_UNJAILED and set JAILER_BIN (or install one with sbx setup); see docs/operations.md, Security",
    };
  let jailer: { path: string } | undefined;
  try {
    jailer = await resolveJailerBinary(config);
  } catch (error) {
    return {
      id: "jailer",
      status: "fail",
      summary: failureMessage(error),
      fix: "point JAILER_BIN at a jailer binary of this arch (from a Firecracker release), or reinstall with sbx setup",
    };
  }
  if (!jailer)
    return {
      id: "jailer",
      status: "fail",
      summary: `no jailer (JAILER_BIN unset, none at ${join(config.firecrackerRoot, config.firecrackerVersion, config.targetArch, "jailer")}): no VM will start`,
      fix: "set JAILER_BIN to a Firecracker jailer (sbx setup installs one), or opt out with SBX_UNJAILED=1 to run VMs unjailed as root",
    };
  if (process.getuid?.() !== 0)
    return {
      id: "jailer",
      status: "fail",
      summary: `jailer ${jailer.path}: the jailer needs root (chroot, uid change, cgroups); no VM will start as this user`,
      fix: "run sbx as root, or opt out with SBX_UNJAILED=1",
    };
  const firecracker = await resolveFirecrackerBinary(config).catch(() => undefined);
  if (!firecracker)
    return {
      id: "jailer",
      status: "warn",
      summary: `jailer ${jailer.path}; set FIRECRACKER_BIN (or install Firecracker) to check the pair`,
    };
  try {
    const versions = await readJailerAndFirecrackerVersions({
      jailer: jailer.path,
      firecracker: firecracker.path,
    });
    const layout = jailLayout(config);
    return {
      id: "jailer",
      status: "ok",
      summary: `jailer v${versions.jailer} with Firecracker v${versions.firecracker}: each VM in its own chroot under ${layout.chrootBaseDir}, uid/gid from ${config.jailUidRange}, cgroups under ${layout.parentCgroup}`,
    };
  } catch (error) {
    return {
      id: "jailer",
      status: "fail",
      summary: `jailer ${jailer.path}: ${failureMessage(error)}`,
      fix: "point JAILER_BIN at a jailer binary of this arch (from a Firecracker release)",
    };
  }
}

/** Whether disks clone by reflink in the state directory: otherwise every create copies the whole disk. */
async function checkDiskClones(config: OrchestratorConfig): Promise<DoctorCheck> {
  try {
    await access(config.stateDir, constants.W_OK);
  } catch {
    return {
      id: "disk-clones",
      status: "warn",
      summary: `${config.stateDir} does not exist yet: cannot tell whether disks clone there`,
      fix: "run sbx doctor again once the state directory exists",
    };
  }
  try {
    if (await directoryClones(config.stateDir))
      return { id: "disk-clones", status: "ok", summary: `disks in ${config.stateDir} are reflink clones` };
  } catch (error) {
    return {
      id: "disk-clones",
      status: "warn",
      summary: `cannot probe clones in ${config.stateDir}: ${failureMessage(error)}`,
      fix: `make ${config.stateDir} writable by this user`,
    };
  }
  return {
    id: "disk-clones",
    status: "warn",
    summary: `${config.stateDir} cannot reflink: every create and pause copies the whole disk (sparse)`,
    fix: "put the state directory on XFS made with reflink=1 (mkfs.xfs -m reflink=1, the default since xfsprogs 5.1) or on btrfs; see docs/operations.md",
  };
}

/**
 * Checks this host against the config with the same resolution functions the build uses, so a
 * missing or mismatched artifact shows here, with the fix, instead of in the middle of a build.
 */
export async function runDoctor(
  config: OrchestratorConfig,
  hostOverrides: Partial<DoctorHost> = {},
): Promise<DoctorCheck[]> {
  const host = { ...defaultDoctorHost(), ...hostOverrides };
  return [
    checkArch(config, host),
    await checkKvm(host),
    ...(await checkUserfaultfd(host, config)),
    await checkHugepages(host),
    ...(await checkE2fsprogs()),
    await checkIp(host),
    await checkSandboxNetworks(host),
    await checkCommand(
      "nft",
      ["nft", "--version"],
      /nftables v(\S+)/,
      "apt-get install nftables (every sandbox network gets NAT and its egress rules through nft)",
    ),
    await checkBusybox(config),
    await checkFirecracker(config, host),
    await checkKernel(config),
    await checkCpuTemplate(config),
    await checkStateDir(config),
    await checkDiskClones(config),
    await checkJailer(config),
    await checkCapacity(config, host.meminfoPath),
    ...(await checkBuildStore(config, host.env)),
  ];
}

const MARK: Readonly<Record<DoctorStatus, string>> = { ok: "ok  ", warn: "WARN", fail: "FAIL" };

export function formatDoctorReport(checks: readonly DoctorCheck[]): string {
  const width = Math.max(...checks.map((c) => c.id.length));
  const lines = checks.map((check) => {
    const indent = " ".repeat(width + 7);
    const line = `${MARK[check.status]} ${check.id.padEnd(width)}  ${check.summary.replaceAll("\n", `\n${indent}`)}`;
    return check.fix ? `${line}\n${indent}fix: ${check.fix}` : line;
  });
  const failed = checks.filter((c) => c.status === "fail").length;
  const warned = checks.filter((c) => c.status === "warn").length;
  lines.push(
    failed === 0
      ? `ready (${warned} warning${warned === 1 ? "" : "s"})`
      : `${failed} check${failed === 1 ? "" : "s"} failed`,
  );
  return `${lines.join("\n")}\n`;
}
