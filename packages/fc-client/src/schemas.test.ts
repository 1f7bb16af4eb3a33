// Self-contained checks of the schemas (the spec-walk test covers them against the spec files when
// ../shared is present; these keep the core rules tested on a machine without it).
import { describe, expect, it } from "vitest";
import { OPERATIONS, operationPath } from "./operations.ts";
import {
  fullVmConfigurationSchema,
  machineConfigurationSchema,
  mmdsConfigSchema,
  snapshotLoadParamsSchema,
} from "./schemas.ts";

describe("request schemas", () => {
  it("are strict, and report an unknown nested field with its path", () => {
    const result = fullVmConfigurationSchema.safeParse({
      "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
      drives: [{ drive_id: "root", is_root_device: true, rate_limiter: { bandwith: {} } }],
    });
    expect(result.success).toBe(false);
    expect(result.error?.issues[0]).toMatchObject({
      code: "unrecognized_keys",
      keys: ["bandwith"],
      path: ["drives", 0, "rate_limiter"],
    });
  });

  it("accept null for unset optional fields, as Firecracker's own config files write them", () => {
    const config = {
      "boot-source": { kernel_image_path: "vmlinux", boot_args: null, initrd_path: null },
      drives: [
        { drive_id: "rootfs", partuuid: null, is_root_device: true, rate_limiter: null, socket: null },
      ],
      "machine-config": { vcpu_count: 2, mem_size_mib: 1024, smt: false },
      balloon: null,
      vsock: null,
    };
    expect(fullVmConfigurationSchema.parse(config)).toEqual(config);
    expect(machineConfigurationSchema.safeParse({ vcpu_count: 1, mem_size_mib: null }).success).toBe(false);
  });

  it("keep the spec's constraints", () => {
    expect(machineConfigurationSchema.safeParse({ vcpu_count: 0, mem_size_mib: 128 }).success).toBe(false);
    expect(
      machineConfigurationSchema.safeParse({ vcpu_count: 1, mem_size_mib: 128, cpu_template: "C4" }).success,
    ).toBe(false);
    expect(
      mmdsConfigSchema.safeParse({ network_interfaces: ["eth0"], ipv4_address: "169.254.170.2" }).success,
    ).toBe(true);
    expect(
      mmdsConfigSchema.safeParse({ network_interfaces: ["eth0"], ipv4_address: "169.254.0.1" }).success,
    ).toBe(false);
    expect(
      mmdsConfigSchema.safeParse({ network_interfaces: ["eth0"], ipv4_address: "10.0.0.1" }).success,
    ).toBe(false);
    expect(
      snapshotLoadParamsSchema.safeParse({
        snapshot_path: "/s",
        mem_backend: { backend_type: "Memfd", backend_path: "/u" },
      }).success,
    ).toBe(false);
  });
});

describe("operation paths", () => {
  it("fill ids from the body, URI-encoded, and refuse a missing id", () => {
    expect(operationPath(OPERATIONS.putGuestDriveByID, { drive_id: "../root fs" })).toBe(
      "/drives/..%2Froot%20fs",
    );
    expect(operationPath(OPERATIONS.patchGuestPmemByID, { id: "p0" })).toBe("/pmem/p0");
    expect(() => operationPath(OPERATIONS.putGuestNetworkInterfaceByID, { iface_id: "" })).toThrow(
      /iface_id/,
    );
    expect(operationPath(OPERATIONS.putMachineConfiguration, {})).toBe("/machine-config");
  });
});
