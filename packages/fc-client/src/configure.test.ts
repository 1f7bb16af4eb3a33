import { describe, expect, it } from "vitest";
import type { FirecrackerClient } from "./client.ts";
import { CONFIGURE_ORDER, configureAndStart } from "./configure.ts";
import { FirecrackerLaunchError } from "./errors.ts";

/** A client that records which method was called with what, and can fail one method. */
function recordingClient(failOn?: string): { client: FirecrackerClient; calls: [string, unknown][] } {
  const calls: [string, unknown][] = [];
  const client = new Proxy(
    {},
    {
      get: (_target, name) => async (body: unknown) => {
        calls.push([String(name), body]);
        if (name === failOn) throw new Error(`${String(name)} refused`);
        return undefined;
      },
    },
  ) as FirecrackerClient;
  return { client, calls };
}

describe("configureAndStart", () => {
  it("applies a whole VM config in Firecracker's order, then InstanceStart", async () => {
    const { client, calls } = recordingClient();
    await configureAndStart(client, {
      "mmds-config": { network_interfaces: ["eth0"], version: "V2" },
      metrics: { metrics_path: "/m" },
      logger: { log_path: "/l" },
      entropy: {},
      balloon: { amount_mib: 0, deflate_on_oom: true },
      vsock: { guest_cid: 3, uds_path: "/v.sock" },
      "network-interfaces": [{ iface_id: "eth0", host_dev_name: "tap0" }],
      drives: [
        { drive_id: "rootfs", path_on_host: "/r.ext4", is_root_device: true, is_read_only: false },
        { drive_id: "data", path_on_host: "/d.ext4", is_root_device: false, is_read_only: true },
      ],
      "boot-source": { kernel_image_path: "/vmlinux" },
      "cpu-config": {},
      "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
    } as never);
    expect(calls.map(([name]) => name)).toEqual([
      "putMachineConfiguration",
      "putCpuConfiguration",
      "putGuestBootSource",
      "putGuestDriveByID",
      "putGuestDriveByID",
      "putGuestNetworkInterfaceByID",
      "putGuestVsock",
      "putBalloon",
      "putEntropyDevice",
      "putLogger",
      "putMetrics",
      "putMmdsConfig",
      "createSyncAction",
    ]);
    expect(calls.at(-1)![1]).toEqual({ action_type: "InstanceStart" });
    expect((calls[3]![1] as { drive_id: string }).drive_id).toBe("rootfs");
  });

  it("skips what the config leaves out, can stop before InstanceStart, and names the failing step", async () => {
    const minimal = recordingClient();
    await configureAndStart(minimal.client, { "boot-source": { kernel_image_path: "/k" } } as never, {
      start: false,
    });
    expect(minimal.calls.map(([name]) => name)).toEqual(["putGuestBootSource"]);

    const failing = recordingClient("putGuestDriveByID");
    const error = await configureAndStart(failing.client, {
      "boot-source": { kernel_image_path: "/k" },
      drives: [{ drive_id: "rootfs", path_on_host: "/r", is_root_device: true }],
    } as never).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FirecrackerLaunchError);
    expect((error as FirecrackerLaunchError).code).toBe("CONFIGURE_FAILED");
    expect((error as Error).message).toMatch(/at drives\/rootfs: putGuestDriveByID refused/);
    expect(failing.calls.map(([name]) => name)).not.toContain("createSyncAction");
  });

  it("follows CONFIGURE_ORDER: every section it lists, in its order, with one call per device", async () => {
    const { client, calls } = recordingClient();
    const config = {
      "mmds-config": { network_interfaces: ["eth0"] },
      metrics: { metrics_path: "/m" },
      logger: { log_path: "/l" },
      "memory-hotplug": { total_size_mib: 1024 },
      entropy: {},
      balloon: { amount_mib: 0, deflate_on_oom: true },
      vsock: { guest_cid: 3, uds_path: "/v.sock" },
      "network-interfaces": [{ iface_id: "eth0", host_dev_name: "tap0" }],
      pmem: [
        { id: "p0", path_on_host: "/p0" },
        { id: "p1", path_on_host: "/p1" },
      ],
      drives: [{ drive_id: "rootfs", path_on_host: "/r.ext4", is_root_device: true }],
      "boot-source": { kernel_image_path: "/vmlinux" },
      "cpu-config": {},
      "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
    };
    expect(Object.keys(config).sort()).toEqual([...CONFIGURE_ORDER].sort());
    await configureAndStart(client, config as never, { start: false });
    const bodies = calls.map(([, body]) => body);
    const expected = CONFIGURE_ORDER.flatMap((section) => {
      const value = config[section];
      return Array.isArray(value) ? value : [value];
    });
    expect(bodies).toEqual(expected);
    expect(calls.filter(([name]) => name === "putGuestPmemByID")).toHaveLength(2);
  });
});
