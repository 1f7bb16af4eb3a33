import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { z } from "zod";
import { createFirecrackerClient } from "./client.ts";
import {
  FirecrackerApiError,
  FirecrackerError,
  FirecrackerLaunchError,
  FirecrackerVersionError,
} from "./errors.ts";
import { rejection } from "./test-errors.ts";
import { fdCount, settledFdCount } from "./test-process-counts.ts";
import { startFakeFirecrackerApi } from "./testing/fake-api-server.ts";

// Node opens some descriptors lazily (the first socket, the first timer): one round trip before any
// count, so each test's count is exact and a leak cannot hide behind a descriptor closed early.
beforeAll(async () => {
  await using api = await startFakeFirecrackerApi();
  await using client = createFirecrackerClient({ socketPath: api.socketPath, arch: "amd64" });
  await client.describeInstance();
});
let fdsBefore = 0;
beforeEach(() => {
  fdsBefore = fdCount();
});
afterEach(async () => {
  expect(await settledFdCount(fdsBefore)).toBe(fdsBefore);
});

describe("the client against the fake Firecracker API", () => {
  it("configures, boots, pauses and snapshots a VM, sending exactly the validated bodies", async () => {
    await using api = await startFakeFirecrackerApi();
    await using client = createFirecrackerClient({ socketPath: api.socketPath, arch: "amd64" });
    await client.putMachineConfiguration({ vcpu_count: 2, mem_size_mib: 256, track_dirty_pages: true });
    await client.putGuestBootSource({ kernel_image_path: "/k", boot_args: "console=ttyS0" });
    await client.putGuestDriveByID({ drive_id: "root fs", path_on_host: "/r.ext4", is_root_device: true });
    await client.createSyncAction({ action_type: "InstanceStart" });
    expect((await client.describeInstance()).state).toBe("Running");
    await client.patchVm({ state: "Paused" });
    await client.createSnapshot({ mem_file_path: "/m", snapshot_path: "/s", snapshot_type: "Full" });
    expect(api.requests.map((r) => `${r.method} ${r.path} ${r.status}`)).toEqual([
      "PUT /machine-config 204",
      "PUT /boot-source 204",
      "PUT /drives/root%20fs 204",
      "PUT /actions 204",
      "GET / 200",
      "PATCH /vm 204",
      "PUT /snapshot/create 204",
    ]);
    const config = await client.getExportVmConfig();
    expect(config["machine-config"]).toMatchObject({
      vcpu_count: 2,
      mem_size_mib: 256,
      track_dirty_pages: true,
    });
    expect(config.drives?.[0]?.drive_id).toBe("root fs");
  });

  it("refuses a typo before sending, naming the field", async () => {
    await using api = await startFakeFirecrackerApi();
    await using client = createFirecrackerClient({ socketPath: api.socketPath, arch: "amd64" });
    const error = await rejection(
      client.putMachineConfiguration({ vcpu_count: 1, mem_size_mib: 128, vcpu_countt: 1 } as never),
    );
    expect(error.code).toBe("INVALID_REQUEST");
    expect(error.message).toMatch(/vcpu_countt/);
    const outOfRange = await rejection(client.putMachineConfiguration({ vcpu_count: 64, mem_size_mib: 128 }));
    expect(outOfRange.message).toMatch(/vcpu_count/);
    expect(api.requests).toHaveLength(0);
    // The fake answers the same typo the way Firecracker does, when it is sent unchecked.
    const raw = await rejection(
      client.request("PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 128, vcpu_countt: 1 }),
    );
    expect(raw).toBeInstanceOf(FirecrackerApiError);
    expect((raw as FirecrackerApiError).status).toBe(400);
    expect((raw as FirecrackerApiError).faultMessage).toMatch(
      /unknown field `vcpu_countt`, expected one of `vcpu_count`/,
    );
  });

  it("turns Firecracker's 400s into FirecrackerApiError with the fault message", async () => {
    await using api = await startFakeFirecrackerApi();
    await using client = createFirecrackerClient({ socketPath: api.socketPath, arch: "amd64" });
    const error = await rejection(client.createSyncAction({ action_type: "InstanceStart" }));
    expect(error).toBeInstanceOf(FirecrackerApiError);
    expect(error).toMatchObject({ code: "API_ERROR", status: 400, method: "PUT", path: "/actions" });
    expect((error as FirecrackerApiError).faultMessage).toMatch(/without kernel configuration/);
    await client.putGuestBootSource({ kernel_image_path: "/k" });
    await client.createSyncAction({ action_type: "InstanceStart" });
    const late = await rejection(client.putGuestBootSource({ kernel_image_path: "/k2" }));
    expect((late as FirecrackerApiError).faultMessage).toBe(
      "The requested operation is not supported after starting the microVM.",
    );
  });

  it("reads the version once, and refuses what the running version lacks, naming the minimum", async () => {
    await using api = await startFakeFirecrackerApi({ version: "1.12.1" });
    await using client = createFirecrackerClient({ socketPath: api.socketPath, arch: "amd64" });
    await client.putMachineConfiguration({ vcpu_count: 1, mem_size_mib: 128 });
    expect(api.requests.map((r) => r.path)).toEqual(["/machine-config"]); // no version lookup needed
    const field = await rejection(
      client.loadSnapshot({ snapshot_path: "/s", mem_file_path: "/m", clock_realtime: false }),
    );
    expect(field).toBeInstanceOf(FirecrackerVersionError);
    expect(field).toMatchObject({
      operation: "loadSnapshot",
      field: "clock_realtime",
      version: "1.12.1",
      minimumVersion: "1.16",
    });
    const operation = await rejection(client.putSerialDevice({ serial_out_path: "/tmp/out" }));
    expect(operation).toMatchObject({
      code: "VERSION_UNSUPPORTED",
      operation: "putSerialDevice",
      minimumVersion: "1.14",
    });
    expect(operation.message).toMatch(
      /needs Firecracker 1\.14 or newer; the running Firecracker is 1\.12\.1/,
    );
    expect(api.requests.map((r) => r.path)).toEqual(["/machine-config", "/version"]);
    // What the fake (behaving as 1.12) says when the same field is sent unchecked: the refusal was right.
    const raw = await rejection(
      client.request("PUT", "/snapshot/load", { snapshot_path: "/s", clock_realtime: false }),
    );
    expect((raw as FirecrackerApiError).faultMessage).toMatch(/unknown field `clock_realtime`/);
    expect(await client.version()).toBe("1.12.1");
  });

  it("takes the version as an option, and accepts what that version has", async () => {
    await using api = await startFakeFirecrackerApi({ version: "1.16.1" });
    await using client = createFirecrackerClient({
      socketPath: api.socketPath,
      arch: "amd64",
      version: "1.16.0",
    });
    await client.putSerialDevice({ serial_out_path: "/tmp/out" });
    await client.putGuestNetworkInterfaceByID({ iface_id: "eth0", host_dev_name: "tap0", mtu: 1400 });
    expect(api.requests.map((r) => r.path)).toEqual(["/serial", "/network-interfaces/eth0"]);
    expect(() => createFirecrackerClient({ socketPath: api.socketPath, version: "latest" })).toThrow(
      /not a Firecracker version/,
    );
  });

  it("refuses arch-specific fields and actions on the other arch before sending", async () => {
    await using api = await startFakeFirecrackerApi();
    await using arm = createFirecrackerClient({ socketPath: api.socketPath, arch: "arm64" });
    await using x86 = createFirecrackerClient({ socketPath: api.socketPath, arch: "amd64" });
    const refusals = [
      arm.putMachineConfiguration({ vcpu_count: 2, mem_size_mib: 128, smt: true }),
      arm.putMachineConfiguration({ vcpu_count: 2, mem_size_mib: 128, cpu_template: "C3" }),
      arm.createSyncAction({ action_type: "SendCtrlAltDel" }),
      arm.loadSnapshot({ snapshot_path: "/s", clock_realtime: true }),
      arm.putCpuConfiguration({ cpuid_modifiers: [] }),
      x86.putCpuConfiguration({ vcpu_features: [{ index: 0, bitmap: "0b1" }] }),
      x86.putMachineConfiguration({ vcpu_count: 2, mem_size_mib: 128, cpu_template: "V1N1" }),
    ];
    for (const refusal of refusals) expect((await rejection(refusal)).code).toBe("ARCH_UNSUPPORTED");
    expect(api.requests).toHaveLength(0);
    await arm.putMachineConfiguration({ vcpu_count: 2, mem_size_mib: 128, smt: false, cpu_template: "V1N1" });
    await x86.putMachineConfiguration({ vcpu_count: 2, mem_size_mib: 128, smt: true, cpu_template: "T2" });
    expect(api.requests).toHaveLength(2);
  });

  it("sends a fork's declared extension fields and stays strict for everything else", async () => {
    const seen: unknown[] = [];
    await using api = await startFakeFirecrackerApi({
      intercept: (request) => {
        if (request.path !== "/snapshot/load") return undefined;
        seen.push(request.body);
        return { status: 204 };
      },
    });
    await using client = createFirecrackerClient({
      socketPath: api.socketPath,
      arch: "amd64",
      extensions: {
        loadSnapshot: {
          mem_backend: z.strictObject({ backend_type: z.literal("Memfd"), backend_path: z.string() }),
          prefault: z.boolean().optional(),
        },
      },
    });
    await client.loadSnapshot({
      snapshot_path: "/s",
      mem_backend: { backend_type: "Memfd", backend_path: "/u" },
      prefault: true,
    });
    expect(seen).toEqual([
      { snapshot_path: "/s", mem_backend: { backend_type: "Memfd", backend_path: "/u" }, prefault: true },
    ]);
    const typo = await rejection(client.loadSnapshot({ snapshot_path: "/s", prefualt: true } as never));
    expect(typo.message).toMatch(/prefualt/);
    const other = await rejection(
      client.putMachineConfiguration({ vcpu_count: 1, mem_size_mib: 1, prefault: true } as never),
    );
    expect(other.code).toBe("INVALID_REQUEST");
    expect(() =>
      createFirecrackerClient({ socketPath: api.socketPath, extensions: { putMmds: { x: z.string() } } }),
    ).toThrow(/no object body/);
  });

  it("answers GETs parsed, keeping unknown response keys out of the way rather than failing", async () => {
    await using api = await startFakeFirecrackerApi({
      intercept: (request) =>
        request.path === "/machine-config"
          ? { status: 200, body: { vcpu_count: 2, mem_size_mib: 64, added_in_a_future_version: 1 } }
          : undefined,
    });
    await using client = createFirecrackerClient({ socketPath: api.socketPath, arch: "amd64" });
    expect(await client.getMachineConfiguration()).toEqual({ vcpu_count: 2, mem_size_mib: 64 });
    expect(await client.getFirecrackerVersion()).toEqual({ firecracker_version: "1.16.1" });
    await client.putMmds({ latest: { meta: { id: "a" } } });
    await client.patchMmds({ latest: { meta: { ip: "b" } } });
    expect(await client.getMmds()).toEqual({ latest: { meta: { id: "a", ip: "b" } } });
  });

  it("has one error family: every error of the package is a FirecrackerError", () => {
    expect(new FirecrackerLaunchError("SPAWN_FAILED", "x")).toBeInstanceOf(FirecrackerError);
    expect(new FirecrackerApiError({ status: 400, method: "PUT", path: "/x" }).message).toMatch(
      /no fault_message/,
    );
  });
});
