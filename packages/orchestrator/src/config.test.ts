import { hostArch } from "@sbx/arch";
import { describe, expect, it } from "vitest";
import {
  ARCH_DEFAULTS,
  CONFIG_DEFAULTS,
  CONFIG_ENV_VARIABLES,
  type ConfigIssue,
  configFromEnv,
  createConfig,
  DEFAULT_BUSYBOX_VERSION,
} from "./config.ts";
import { OrchestratorError } from "./errors.ts";

function issuesOf(run: () => unknown): ConfigIssue[] {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(OrchestratorError);
    expect((error as OrchestratorError).code).toBe("CONFIG_INVALID");
    return (error as OrchestratorError).details.issues as ConfigIssue[];
  }
  throw new Error("expected CONFIG_INVALID");
}

describe("createConfig", () => {
  it("fills every default from the one defaults table", () => {
    const config = createConfig({ targetArch: "amd64" });
    expect(config).toMatchObject({
      targetArch: "amd64",
      cpuTemplate: { kind: "none" },
      busyboxVersion: DEFAULT_BUSYBOX_VERSION,
      busyboxDir: CONFIG_DEFAULTS.busyboxDir,
      firecrackerVersion: CONFIG_DEFAULTS.firecrackerVersion,
      stateDir: CONFIG_DEFAULTS.stateDir,
      readyTimeoutMs: ARCH_DEFAULTS.amd64.readyTimeoutMs,
      provisioningTimeoutMs: ARCH_DEFAULTS.amd64.provisioningTimeoutMs,
      kernelName: "vmlinux",
      firecrackerBin: undefined,
      useMemfd: "off",
    });
    expect(Object.isFrozen(config)).toBe(true);
  });

  it("reads the arm64 seccomp decision: a filter path or an explicit opt-out", () => {
    expect(configFromEnv({ SBX_ALLOW_NO_SECCOMP: "yes" }).allowNoSeccomp).toBe(true);
    expect(configFromEnv({}).allowNoSeccomp).toBe(false);
    expect(configFromEnv({ SBX_SECCOMP_FILTER: "/etc/sbx/arm64.bpf" }).seccompFilter).toBe(
      "/etc/sbx/arm64.bpf",
    );
    const issues = issuesOf(() =>
      configFromEnv({ SBX_ALLOW_NO_SECCOMP: "maybe", SBX_SECCOMP_FILTER: "rel.bpf" }),
    );
    expect(issues.map((i) => i.variable).sort()).toEqual(["SBX_ALLOW_NO_SECCOMP", "SBX_SECCOMP_FILTER"]);
  });

  it("reads SBX_USE_MEMFD and names it when the value is not a mode", () => {
    expect(configFromEnv({ SBX_USE_MEMFD: "prefer" }).useMemfd).toBe("prefer");
    const issues = issuesOf(() => configFromEnv({ SBX_USE_MEMFD: "yes" }));
    expect(issues).toEqual([expect.objectContaining({ option: "useMemfd", variable: "SBX_USE_MEMFD" })]);
  });

  it("defaults the target arch to the host and uses per-arch timeouts", () => {
    expect(createConfig().targetArch).toBe(hostArch());
    const arm = createConfig({ targetArch: "aarch64" });
    expect(arm.targetArch).toBe("arm64");
    expect(arm.readyTimeoutMs).toBe(ARCH_DEFAULTS.arm64.readyTimeoutMs);
    expect(arm.readyTimeoutMs).toBeGreaterThan(ARCH_DEFAULTS.amd64.readyTimeoutMs);
    expect(arm.kernelName).toBe("Image");
    expect(createConfig({ targetArch: "arm64", readyTimeoutMs: 1234 }).readyTimeoutMs).toBe(1234);
  });

  it("reports every bad option at once, by option name", () => {
    const issues = issuesOf(() =>
      createConfig({
        targetArch: "sparc",
        stateDir: "relative/dir",
        maxSandboxes: 0,
        busyboxVersion: "../x",
      }),
    );
    expect(issues.map((i) => i.option).sort()).toEqual(
      ["busyboxVersion", "maxSandboxes", "stateDir", "targetArch"].sort(),
    );
    expect(issues.every((i) => i.variable === undefined)).toBe(true);
  });

  it("resolves static and custom CPU templates and refuses both at once", () => {
    expect(createConfig({ cpuTemplate: "t2s", targetArch: "amd64" }).cpuTemplate).toMatchObject({
      kind: "static",
      name: "T2S",
      deprecation: expect.stringMatching(/deprecated.*FC_CUSTOM_CPU_TEMPLATE_PATH/),
    });
    // One parser for the name, the arch and conflicts (@sbx/cpu-template's).
    expect(issuesOf(() => createConfig({ cpuTemplate: "T2A", targetArch: "arm64" }))[0]?.message).toMatch(
      /arm64|aarch64|x86/i,
    );
    expect(createConfig({ cpuTemplate: "None" }).cpuTemplate).toEqual({ kind: "none" });
    expect(createConfig({ customCpuTemplatePath: "/etc/sbx/fleet.json" }).cpuTemplate).toEqual({
      kind: "custom",
      path: "/etc/sbx/fleet.json",
    });
    const both = issuesOf(() => createConfig({ cpuTemplate: "T2", customCpuTemplatePath: "/x.json" }));
    expect(both[0]?.message).toMatch(/choose one/);
    expect(issuesOf(() => createConfig({ cpuTemplate: "Z9" }))[0]?.message).toMatch(/Z9/);
  });

  it("checks the network addresses against each other", () => {
    expect(issuesOf(() => createConfig({ guestAddress: "192.168.9.2" }))[0]?.message).toMatch(
      /not in the TAP subnet/,
    );
    expect(issuesOf(() => createConfig({ guestAddress: "192.168.241.1" }))[0]?.option).toBe("guestAddress");
    expect(issuesOf(() => createConfig({ hostAddressPool: "10.200.0.1/16" }))[0]?.message).toMatch(
      /host bits/,
    );
    expect(issuesOf(() => createConfig({ hostAddressPool: "192.168.0.0/16" }))[0]?.message).toMatch(
      /overlaps the TAP subnet/,
    );
    expect(issuesOf(() => createConfig({ tapName: "a-name-longer-than-15" }))[0]?.option).toBe("tapName");
  });
});

describe("configFromEnv", () => {
  it("maps every documented variable", () => {
    const config = configFromEnv({
      TARGET_ARCH: " x86_64 ",
      FC_CPU_TEMPLATE: "C3",
      HOST_BUSYBOX_DIR: "/srv/busybox",
      BUSYBOX_VERSION: "1.37.0",
      FIRECRACKER_DIR: "/srv/fc",
      FIRECRACKER_VERSION: "v1.15.0",
      FIRECRACKER_BIN: "/opt/firecracker/firecracker",
      KERNEL_DIR: "/srv/kernels",
      KERNEL_VERSION: "6.6",
      SBX_STATE_DIR: "/run/sbx",
      SBX_MAX_SANDBOXES: "10",
      SBX_MAX_CONCURRENT_CREATES: "4",
      SBX_READY_TIMEOUT_MS: "2500",
      SBX_HOST_ADDRESS_POOL: "10.201.0.0/24",
    });
    expect(config).toMatchObject({
      targetArch: "amd64",
      cpuTemplate: { kind: "static", name: "C3" },
      busyboxDir: "/srv/busybox",
      busyboxVersion: "1.37.0",
      firecrackerRoot: "/srv/fc",
      firecrackerVersion: "v1.15.0",
      firecrackerBin: "/opt/firecracker/firecracker",
      kernelRoot: "/srv/kernels",
      kernelVersion: "6.6",
      stateDir: "/run/sbx",
      maxSandboxes: 10,
      maxConcurrentCreates: 4,
      readyTimeoutMs: 2500,
      hostAddressPool: "10.201.0.0/24",
    });
  });

  it("treats empty values as unset", () => {
    expect(configFromEnv({ BUSYBOX_VERSION: "", TARGET_ARCH: "  " }).busyboxVersion).toBe(
      DEFAULT_BUSYBOX_VERSION,
    );
  });

  it("reports every bad variable at once, each with its name and value", () => {
    const issues = issuesOf(() =>
      configFromEnv({
        TARGET_ARCH: "mips",
        SBX_MAX_SANDBOXES: "ten",
        SBX_READY_TIMEOUT_MS: "-5",
        HOST_BUSYBOX_DIR: "busybox",
        FC_CPU_TEMPLATE: "T2",
        FC_CUSTOM_CPU_TEMPLATE_PATH: "/etc/t.json",
        SBX_GUEST_ADDRESS: "300.1.1.1",
      }),
    );
    const byVariable = new Map(issues.map((i) => [i.variable, i]));
    expect([...byVariable.keys()].sort()).toEqual(
      [
        "FC_CPU_TEMPLATE",
        "HOST_BUSYBOX_DIR",
        "SBX_GUEST_ADDRESS",
        "SBX_MAX_SANDBOXES",
        "SBX_READY_TIMEOUT_MS",
        "TARGET_ARCH",
      ].sort(),
    );
    expect(byVariable.get("SBX_MAX_SANDBOXES")?.value).toBe("ten");
    const error = (() => {
      try {
        configFromEnv({ TARGET_ARCH: "mips", SBX_MAX_SANDBOXES: "ten" });
      } catch (caught) {
        return caught as Error;
      }
      throw new Error("configFromEnv accepted TARGET_ARCH=mips");
    })();
    expect(error).toMatchObject({ code: "CONFIG_INVALID" });
    expect(error.message).toContain('TARGET_ARCH="mips"');
    expect(error.message).toContain('SBX_MAX_SANDBOXES="ten"');
  });

  it("lets plain options override the environment", () => {
    const issues = issuesOf(() => configFromEnv({ SBX_STATE_DIR: "rel" }, { maxSandboxes: 0 }));
    expect(issues.map((i) => [i.option, i.variable])).toEqual(
      expect.arrayContaining([
        ["stateDir", "SBX_STATE_DIR"],
        ["maxSandboxes", undefined],
      ]),
    );
    expect(configFromEnv({ SBX_STATE_DIR: "/a" }, { stateDir: "/b" }).stateDir).toBe("/b");
  });

  it("documents a distinct variable for every option", () => {
    const variables = Object.values(CONFIG_ENV_VARIABLES).map((v) => v.variable);
    expect(new Set(variables).size).toBe(variables.length);
  });
});
