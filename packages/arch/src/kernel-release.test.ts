import { release } from "node:os";
import { describe, expect, it } from "vitest";
import { hostKernelRelease, parseKernelRelease, uffdWriteProtectSupported } from "./kernel-release.ts";

describe("parseKernelRelease", () => {
  it.each([
    ["6.1.0-47-cloud-amd64", 6, 1, 0],
    ["5.10.223-212.873.amzn2.x86_64", 5, 10, 223],
    ["6.9.12-arch1-1", 6, 9, 12],
    ["6.18.44-custom", 6, 18, 44],
    ["6.18.44-fc-v595", 6, 18, 44],
    ["4.19", 4, 19, 0],
    ["6.10.0+", 6, 10, 0],
  ])("parses %s", (value, major, minor, patch) => {
    expect(parseKernelRelease(value)).toEqual({ major, minor, patch, raw: value });
  });

  it.each(["", "linux", "6", "v6.1.0", "6.x.1", "6.1.0 extra words"])("rejects %j", (value) => {
    expect(() => parseKernelRelease(value)).toThrowError(
      expect.objectContaining({ code: "INVALID_KERNEL_RELEASE" }),
    );
  });

  it("reads this host", () => {
    expect(hostKernelRelease().raw).toBe(release());
  });
});

describe("uffdWriteProtectSupported", () => {
  it.each([
    ["amd64", "5.6.0", "anonymous", false],
    ["amd64", "5.7.0", "anonymous", true],
    ["amd64", "5.10.223-212.873.amzn2.x86_64", "anonymous", true],
    ["amd64", "5.10.223", "shmem", false],
    ["amd64", "5.18.9", "hugetlb", false],
    ["amd64", "5.19.0", "hugetlb", true],
    ["amd64", "6.1.0-47-cloud-amd64", "shmem", true],
    ["arm64", "6.1.0", "anonymous", false],
    ["arm64", "6.9.12-arch1-1", "anonymous", false],
    ["arm64", "6.10.0", "anonymous", true],
    ["arm64", "6.10.0", "shmem", true],
    ["arm64", "6.18.44", "hugetlb", true],
  ] as const)("%s %s %s → %s", (arch, kernel, backing, supported) => {
    const verdict = uffdWriteProtectSupported({ arch, release: kernel, backing });
    expect(verdict.supported).toBe(supported);
    expect(verdict.reason).toContain(kernel);
  });

  it("names the arm64 rule when it says no", () => {
    expect(
      uffdWriteProtectSupported({ arch: "arm64", release: "6.6.0", backing: "anonymous" }).reason,
    ).toMatch(/arm64 kernels before 6\.10/);
  });

  it("accepts an already parsed release", () => {
    const parsed = parseKernelRelease("6.12.0");
    expect(
      uffdWriteProtectSupported({ arch: "arm64", release: parsed, backing: "anonymous" }).supported,
    ).toBe(true);
  });
});
