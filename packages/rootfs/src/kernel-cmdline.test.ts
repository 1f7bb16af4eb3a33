import { describe, expect, it } from "vitest";
import { RootfsError } from "./errors.ts";
import {
  buildKernelCmdline,
  formatIpParameter,
  parseIpParameter,
  prefixToNetmask,
} from "./kernel-cmdline.ts";

// Expected strings are written by hand from Documentation/admin-guide/nfs/nfsroot.rst:
// ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>
describe("formatIpParameter", () => {
  it("writes the Firecracker-style static form with empty server and hostname fields", () => {
    expect(
      formatIpParameter({ clientIp: "172.16.0.2", gatewayIp: "172.16.0.1", netmask: "255.255.255.252" }),
    ).toBe("172.16.0.2::172.16.0.1:255.255.255.252::eth0:off");
  });

  it("fills hostname, device and both DNS fields in their positions", () => {
    expect(
      formatIpParameter({
        clientIp: "10.0.0.2",
        gatewayIp: "10.0.0.1",
        prefixLength: 24,
        hostname: "sbx-1",
        device: "eth1",
        dns: ["1.1.1.1", "8.8.8.8"],
      }),
    ).toBe("10.0.0.2::10.0.0.1:255.255.255.0:sbx-1:eth1:off:1.1.1.1:8.8.8.8");
  });

  it("keeps one DNS server as dns0 and drops only trailing empty fields", () => {
    expect(formatIpParameter({ clientIp: "10.0.0.2", serverIp: "10.0.0.9", dns: ["9.9.9.9"] })).toBe(
      "10.0.0.2:10.0.0.9::::eth0:off:9.9.9.9",
    );
  });

  it("rejects what the kernel would misparse", () => {
    expect(() => formatIpParameter({ clientIp: "10.0.0.256" })).toThrow(RootfsError);
    expect(() => formatIpParameter({ clientIp: "10.0.0.2", hostname: "a:b" })).toThrow(/host name/);
    expect(() => formatIpParameter({ clientIp: "10.0.0.2", device: "a-very-long-interface" })).toThrow(
      /interface/,
    );
    expect(() => formatIpParameter({ clientIp: "10.0.0.2", netmask: "255.0.0.0", prefixLength: 8 })).toThrow(
      /not both/,
    );
  });

  it("round-trips through parseIpParameter", () => {
    const value = "172.16.0.2::172.16.0.1:255.255.255.252:box:eth0:off:1.1.1.1";
    expect(parseIpParameter(value)).toMatchObject({
      clientIp: "172.16.0.2",
      serverIp: "",
      gatewayIp: "172.16.0.1",
      netmask: "255.255.255.252",
      hostname: "box",
      device: "eth0",
      autoconf: "off",
      dns0: "1.1.1.1",
      dns1: "",
    });
    expect(parseIpParameter("dhcp").autoconf).toBe("dhcp");
  });

  it("converts prefix lengths to netmasks", () => {
    expect(prefixToNetmask(0)).toBe("0.0.0.0");
    expect(prefixToNetmask(30)).toBe("255.255.255.252");
    expect(prefixToNetmask(32)).toBe("255.255.255.255");
    expect(prefixToNetmask(17)).toBe("255.255.128.0");
  });
});

describe("buildKernelCmdline", () => {
  it("amd64: console, reboot=k, panic=1, pci=off, ip=, init=, epoch", () => {
    expect(
      buildKernelCmdline({
        arch: "amd64",
        network: {
          clientIp: "172.16.0.2",
          gatewayIp: "172.16.0.1",
          netmask: "255.255.255.252",
          hostname: "sbx",
        },
        epochSeconds: 1_763_856_000,
      }),
    ).toBe(
      "console=ttyS0 reboot=k panic=1 pci=off ip=172.16.0.2::172.16.0.1:255.255.255.252:sbx:eth0:off init=/.sbx/init sbx.epoch=1763856000",
    );
  });

  it("arm64 has no pci=off; the provisioning boot adds sbx.provision=1", () => {
    expect(buildKernelCmdline({ arch: "arm64", provision: true, init: "/sbin/init" })).toBe(
      "console=ttyS0 reboot=k panic=1 init=/sbin/init sbx.provision=1",
    );
  });

  it("omits pci=off when Firecracker runs with PCI, and appends extras in order", () => {
    expect(
      buildKernelCmdline({ arch: "amd64", pci: true, root: "/dev/vda", extra: ["quiet", "loglevel=3"] }),
    ).toBe("console=ttyS0 reboot=k panic=1 root=/dev/vda init=/.sbx/init quiet loglevel=3");
  });

  it("passes a host name without network as sbx.hostname", () => {
    expect(buildKernelCmdline({ arch: "arm64", hostname: "box-1" })).toBe(
      "console=ttyS0 reboot=k panic=1 init=/.sbx/init sbx.hostname=box-1",
    );
    expect(() => buildKernelCmdline({ arch: "arm64", hostname: "bad name" })).toThrow(RootfsError);
  });

  it("refuses parameters that would split into more words", () => {
    expect(() => buildKernelCmdline({ arch: "amd64", extra: ["a b"] })).toThrow(RootfsError);
    expect(() => buildKernelCmdline({ arch: "amd64", init: "/bin/my init" })).toThrow(RootfsError);
    expect(() => buildKernelCmdline({ arch: "riscv" as "amd64" })).toThrow(RootfsError);
  });
});
