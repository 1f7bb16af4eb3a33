// `sbx doctor`'s capacity line: what admission would allow on this host, and what the sandboxes the
// state directory records (running or starting, in whatever process owns them) already hold.
import { readBuild } from "./builds.ts";
import { type CapacityLimits, demandOf, readHostResources, resolveCapacity } from "./capacity.ts";
import type { OrchestratorConfig } from "./config.ts";
import type { DoctorCheck } from "./doctor.ts";
import { StateDirectory } from "./state-dir.ts";

const GiB = 1024 ** 3;
const size = (bytes: number) =>
  bytes >= GiB ? `${(bytes / GiB).toFixed(1)} GiB` : `${Math.round(bytes / 1024 ** 2)} MiB`;

/** Charged to the sandboxes recorded in the state directory (records without a readable build count nothing). */
export async function committedByRecords(config: OrchestratorConfig): Promise<CapacityLimits> {
  const committed: CapacityLimits = { vcpus: 0, memoryBytes: 0, sandboxes: 0 };
  const { records } = await new StateDirectory(config.stateDir).listSandboxes();
  for (const record of records) {
    if (record.state === "paused" || record.state === "stopping") continue;
    committed.sandboxes += 1;
    if (!record.build) continue;
    try {
      const demand = demandOf(await readBuild(config, record.build), config);
      committed.vcpus += demand.vcpus;
      committed.memoryBytes += demand.memoryBytes;
    } catch {
      // A build being removed under a stopping sandbox: nothing left to charge.
    }
  }
  return committed;
}

export async function checkCapacity(config: OrchestratorConfig, meminfoPath: string): Promise<DoctorCheck> {
  let resolved: ReturnType<typeof resolveCapacity>;
  try {
    resolved = resolveCapacity(config, () => readHostResources(meminfoPath));
  } catch (error) {
    return {
      id: "capacity",
      status: "warn",
      summary: (error as Error).message,
      fix: "set SBX_HOST_VCPUS and SBX_HOST_MEMORY_MIB to what sandboxes may use on this host",
    };
  }
  const { host, reserved, limits } = resolved;
  const committed = await committedByRecords(config).catch(() => undefined);
  const used = (resource: keyof CapacityLimits) => (committed ? `${committed[resource]} of ` : "");
  const summary = [
    `admission ${config.admission} (queue ${config.admissionQueueSize}, ${config.admissionTimeoutMs} ms)`,
    `vCPUs ${used("vcpus")}${limits.vcpus} (${host.vcpus} host - ${reserved.vcpus} reserved, x${config.vcpuOvercommit})`,
    `memory ${committed ? `${size(committed.memoryBytes)} of ` : ""}${size(limits.memoryBytes)} (${size(host.memoryBytes)} host - ${size(reserved.memoryBytes)} reserved; guests x${config.memoryOvercommit}, with balloon x${config.balloonMemoryOvercommit})`,
    `sandboxes ${used("sandboxes")}${limits.sandboxes}`,
  ].join("; ");
  if (limits.vcpus < 1 || limits.memoryBytes <= 0) {
    return {
      id: "capacity",
      status: "fail",
      summary: `no room for any sandbox: ${summary}`,
      fix: "lower SBX_RESERVED_VCPUS / SBX_RESERVED_MEMORY_MIB or raise SBX_VCPU_OVERCOMMIT",
    };
  }
  if (config.admission === "off") {
    return {
      id: "capacity",
      status: "warn",
      summary: `${summary}; nothing is refused: a burst larger than the host starts VMs that starve each other`,
      fix: "set SBX_ADMISSION=queue (or reject); see docs/operations.md, Capacity",
    };
  }
  if (committed && (committed.vcpus > limits.vcpus || committed.memoryBytes > limits.memoryBytes)) {
    return {
      id: "capacity",
      status: "warn",
      summary: `over capacity: ${summary}`,
      fix: "new creates wait or are refused until sandboxes stop; the limits may have been lowered since they started",
    };
  }
  return { id: "capacity", status: "ok", summary };
}
