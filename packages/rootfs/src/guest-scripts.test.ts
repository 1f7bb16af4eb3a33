import { spawnSync } from "node:child_process";
import { chmod, mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { injectGuestFiles } from "./guest-files.ts";
import { PROVISION_EXIT_MARKER, parseProvisionExit, READY_MARKER, shellQuote } from "./guest-scripts.ts";
import { buildKernelCmdline } from "./kernel-cmdline.ts";
import { createGuestHarness, type GuestHarness } from "./test-guest-harness.ts";

const BUILD_EPOCH = 1_800_000_000;
let h: GuestHarness;

async function image(options: { provisionScript?: string; workload?: string[] } = {}): Promise<void> {
  await mkdir(join(h.root, "etc"), { recursive: true });
  await injectGuestFiles({
    root: h.root,
    busybox: "/bin/busybox",
    workload: options.workload ?? ["/bin/echo", "workload started", "it's here"],
    buildEpochSeconds: BUILD_EPOCH,
    systemd: false,
    ...(options.provisionScript === undefined ? {} : { provisionScript: options.provisionScript }),
  });
}

async function calls(): Promise<string[]> {
  return (await h.calls()).map((c) => c.replaceAll(h.root, "<root>"));
}

beforeEach(async () => {
  h = await createGuestHarness();
});
afterEach(async () => {
  await h.dispose();
});

const network = {
  clientIp: "172.16.0.2",
  gatewayIp: "172.16.0.1",
  netmask: "255.255.255.252",
  hostname: "sbx-box",
  dns: ["1.1.1.1", "8.8.8.8"],
};

describe("/.sbx/init under busybox sh", () => {
  it("without IP_PNP: mounts, sets clock and hostname, configures ip= from userspace, prints ready, execs the workload", async () => {
    await image();
    const cmdline = buildKernelCmdline({ arch: "arm64", network, epochSeconds: BUILD_EPOCH + 60 });
    const result = await h.run(".sbx/init", { cmdline, ipAddrOutput: "", now: 5 });
    expect(result.code).toBe(0);
    const log = await calls();
    expect(log).toEqual(
      expect.arrayContaining([
        "mount -t proc proc <root>/proc",
        "mount -t sysfs sysfs <root>/sys",
        "mount -t devtmpfs devtmpfs <root>/dev",
        "mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts <root>/dev/pts",
        `date -u -s @${BUILD_EPOCH + 60}`,
        "hostname sbx-box",
        "ip link set lo up",
        "ip link set dev eth0 up",
        "ip addr add 172.16.0.2/30 dev eth0",
        "ip route replace default via 172.16.0.1 dev eth0",
      ]),
    );
    expect(await readFile(join(h.root, "etc/resolv.conf"), "utf8")).toBe(
      "nameserver 1.1.1.1\nnameserver 8.8.8.8\n",
    );
    const lines = result.stdout.split("\n");
    const ready = lines.indexOf(READY_MARKER);
    expect(ready).toBeGreaterThan(-1);
    expect(lines[ready + 1]).toBe("workload started it's here");
    expect(result.stdout).toContain("configured 172.16.0.2/30 on eth0 from userspace");
  });

  it("with IP_PNP: keeps the kernel's address and adds nothing", async () => {
    await image();
    const cmdline = buildKernelCmdline({ arch: "amd64", network });
    const result = await h.run(".sbx/init", {
      cmdline,
      ipAddrOutput: "2: eth0: <UP>\n    inet 172.16.0.2/30 brd 172.16.0.3 scope global eth0\n",
    });
    expect(result.stdout).toContain("kernel applied ip= (IP_PNP); keeping 172.16.0.2 on eth0");
    const log = await calls();
    expect(log.filter((c) => c.startsWith("ip addr add") || c.startsWith("ip route"))).toEqual([]);
    expect(result.stdout).toContain(READY_MARKER);
  });

  it("does not match a longer address that merely starts with the client address", async () => {
    await image();
    await h.run(".sbx/init", {
      cmdline: "ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off",
      ipAddrOutput: "    inet 10.0.0.23/24 scope global eth0\n",
    });
    expect(await calls()).toContain("ip addr add 10.0.0.2/24 dev eth0");
  });

  it("never moves the clock backwards and ignores a malformed epoch", async () => {
    await image();
    await h.run(".sbx/init", { cmdline: "sbx.epoch=100", now: 200 });
    let result = await h.run(".sbx/init", { cmdline: "sbx.epoch=12abc", now: 0 });
    expect((await calls()).filter((c) => c.startsWith("date -u -s"))).toEqual([]);
    expect(result.stdout).toContain("ignoring sbx.epoch=12abc");
    result = await h.run(".sbx/init", { cmdline: "", now: 0 });
    expect(result.stdout).toContain("no ip= on the kernel command line");
  });

  it("reports a bad netmask and still hands over to the workload", async () => {
    await image();
    const result = await h.run(".sbx/init", { cmdline: "ip=10.0.0.2::10.0.0.1:255.0.255.0::eth0:off" });
    expect(result.stdout).toContain("bad netmask 255.0.255.0");
    expect(result.stdout).toContain("error: network setup from ip= failed");
    expect(result.stdout).toContain("workload started");
    expect((await calls()).filter((c) => c.startsWith("ip addr"))).toEqual([]);
  });

  it("leaves ip=dhcp to the kernel", async () => {
    await image();
    const result = await h.run(".sbx/init", { cmdline: "ip=dhcp" });
    expect(result.stdout).toContain("autoconf 'dhcp' is left to the kernel");
  });

  it("parses ip= fields and netmasks exactly like the kernel's positional format", async () => {
    await image();
    const result = await h.run("", {
      cmdline: "x",
      shellCode: `sbx_parse_ip '10.1.2.3:10.9.9.9:10.1.2.1:255.255.0.0:host:eth2:off:9.9.9.9:1.0.0.1'
        echo "$SBX_IP_CLIENT|$SBX_IP_SERVER|$SBX_IP_GATEWAY|$SBX_IP_NETMASK|$SBX_IP_HOSTNAME|$SBX_IP_DEVICE|$SBX_IP_AUTOCONF|$SBX_IP_DNS0|$SBX_IP_DNS1"
        sbx_parse_ip '10.1.2.3::::::off'
        echo "$SBX_IP_CLIENT|$SBX_IP_GATEWAY|$SBX_IP_DEVICE|$SBX_IP_AUTOCONF"
        for m in 255.255.255.255 255.255.255.252 255.255.128.0 0.0.0.0 255.0.255.0 255.255.255 300.0.0.0; do
          printf '%s=%s\\n' "$m" "$(sbx_mask_to_prefix "$m" || echo bad)"
        done`,
    });
    expect(result.stdout.split("\n")).toEqual([
      "10.1.2.3|10.9.9.9|10.1.2.1|255.255.0.0|host|eth2|off|9.9.9.9|1.0.0.1",
      "10.1.2.3|||off",
      "255.255.255.255=32",
      "255.255.255.252=30",
      "255.255.128.0=17",
      "0.0.0.0=0",
      "255.0.255.0=bad",
      "255.255.255=bad",
      "300.0.0.0=bad",
      "",
    ]);
  });

  it("takes the last occurrence of a parameter and does not glob", async () => {
    await image();
    await writeFile(join(h.root, "sbx.hostname=glob"), "");
    const result = await h.run("", {
      cmdline: "sbx.hostname=first * sbx.hostname=second",
      shellCode: 'sbx_cmdline_value sbx.hostname; echo; sbx_cmdline_value missing; echo "status=$?"',
    });
    expect(result.stdout).toBe("second\nstatus=1\n");
  });
});

describe("/.sbx/provision-runner", () => {
  const proof =
    'echo "ran with $0 home=$HOME" > "$SBX_ROOT/proof"; ls "$SBX_ROOT/etc/apt/apt.conf.d" > "$SBX_ROOT/apt-during" 2>/dev/null; exit 0';

  it("runs the script once, deletes it, prints the exit marker and reboots", async () => {
    await image({ provisionScript: proof });
    await writeFile(join(h.root, "etc/resolv.conf"), "nameserver 1.1.1.1\n");
    const cmdline = buildKernelCmdline({ arch: "amd64", provision: true, epochSeconds: BUILD_EPOCH });
    const first = await h.run(".sbx/init", { cmdline, now: BUILD_EPOCH, applets: ["sh"] });
    expect(first.stdout).not.toContain(READY_MARKER);
    expect(parseProvisionExit(first.stdout)).toBe(0);
    expect(await readFile(join(h.root, "proof"), "utf8")).toMatch(/^ran with .* home=\/root\n$/);
    await expect(stat(join(h.root, ".sbx/provision.sh"))).rejects.toThrow(/ENOENT/);
    await stat(join(h.root, ".sbx/provisioned"));
    const log = await calls();
    expect(log.slice(-2)).toEqual(["mount -o remount,ro /", "reboot -f"]);

    await rm(join(h.root, "proof"));
    const second = await h.run(".sbx/provision-runner", { cmdline, now: BUILD_EPOCH });
    expect(second.stdout).toContain("already ran");
    expect(parseProvisionExit(second.stdout)).toBe(0);
    await expect(stat(join(h.root, "proof"))).rejects.toThrow(/ENOENT/);
  });

  it("reports the script's failing status in the marker", async () => {
    await image({ provisionScript: "echo failing; exit 7" });
    const result = await h.run(".sbx/provision-runner", { cmdline: "", now: BUILD_EPOCH });
    expect(result.stdout).toContain(`${PROVISION_EXIT_MARKER} status=7`);
    await expect(stat(join(h.root, ".sbx/provisioned"))).rejects.toThrow(/ENOENT/);
  });

  it("tolerates only a missing chattr, with exactly one warning line", async () => {
    await image({ provisionScript: "exit 0" });
    await writeFile(join(h.root, "etc/resolv.conf"), "nameserver 1.1.1.1\n");
    const result = await h.run(".sbx/provision-runner", {
      cmdline: "",
      now: BUILD_EPOCH,
      applets: ["sh", "ip"],
    });
    const warnings = result.stdout.split("\n").filter((l) => l.includes("chattr"));
    expect(warnings).toEqual([
      "sbx: warning: chattr not found (not in the image, not a busybox applet); /etc/resolv.conf left mutable",
    ]);
    expect(parseProvisionExit(result.stdout)).toBe(0);
  });

  it("uses the image's chattr and fails provisioning with chattr's stderr when it fails", async () => {
    await image({ provisionScript: "exit 0" });
    await writeFile(join(h.root, "etc/resolv.conf"), "nameserver 1.1.1.1\n");
    await mkdir(join(h.root, "usr/bin"), { recursive: true });
    const chattr = join(h.root, "usr/bin/chattr");
    await writeFile(
      chattr,
      `#!/bin/sh\necho "chattr $*" >> "$STUB_LOG"\necho "chattr: Operation not supported while setting flags on $2" >&2\nexit 1\n`,
    );
    await chmod(chattr, 0o755);
    const result = await h.run(".sbx/provision-runner", { cmdline: "", now: BUILD_EPOCH });
    expect(parseProvisionExit(result.stdout)).toBe(1);
    expect(result.stdout).toContain(
      `sbx: provision: chattr +i /etc/resolv.conf failed: chattr: Operation not supported while setting flags on ${h.root}/etc/resolv.conf`,
    );
    await expect(stat(join(h.root, ".sbx/provisioned"))).rejects.toThrow(/ENOENT/);
  });

  it("succeeds with a working chattr, falling back to busybox's applet when the image has none", async () => {
    await image({ provisionScript: "exit 0" });
    await writeFile(join(h.root, "etc/resolv.conf"), "nameserver 1.1.1.1\n");
    const result = await h.run(".sbx/provision-runner", {
      cmdline: "",
      now: BUILD_EPOCH,
      applets: ["sh", "chattr"],
    });
    expect(parseProvisionExit(result.stdout)).toBe(0);
    expect(await calls()).toContain("chattr +i <root>/etc/resolv.conf");
    expect(result.stdout).not.toContain("warning");
  });

  it("bypasses APT's Release date check only as a fallback when the clock is behind the build", async () => {
    await image({ provisionScript: proof });
    await mkdir(join(h.root, "etc/apt/apt.conf.d"), { recursive: true });
    const skewed = await h.run(".sbx/provision-runner", { cmdline: "", now: 1000 });
    expect(skewed.stdout).toContain("guest clock (1000) is behind the image build time");
    expect(await readFile(join(h.root, "apt-during"), "utf8")).toBe("99sbx-clock-skew\n");
    await expect(stat(join(h.root, "etc/apt/apt.conf.d/99sbx-clock-skew"))).rejects.toThrow(/ENOENT/);
  });

  it("does not touch APT when init set the clock from sbx.epoch", async () => {
    await image({ provisionScript: proof });
    await mkdir(join(h.root, "etc/apt/apt.conf.d"), { recursive: true });
    const result = await h.run(".sbx/provision-runner", { cmdline: "", now: BUILD_EPOCH + 1 });
    expect(result.stdout).not.toContain("behind the image build time");
    expect(await readFile(join(h.root, "apt-during"), "utf8")).toBe("");
  });
});

describe("markers and quoting", () => {
  it("parses the exit marker only as a whole line", () => {
    expect(parseProvisionExit(`boot\n${PROVISION_EXIT_MARKER} status=42\r\n`)).toBe(42);
    expect(parseProvisionExit(`echo ${PROVISION_EXIT_MARKER} status=1`)).toBeUndefined();
  });

  it("quotes single quotes for sh", () => {
    expect(shellQuote("it's")).toBe(`'it'\\''s'`);
  });
});

describe("network setup against a real kernel (network namespace)", () => {
  function inNetns(script: string, env: Record<string, string>): { code: number | null; out: string } {
    const result = spawnSync("unshare", ["-n", "/bin/busybox", "sh", "-c", script], {
      env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", ...env },
      encoding: "utf8",
      timeout: 20_000,
    });
    return { code: result.status, out: `${result.stdout}${result.stderr}` };
  }
  const probe = spawnSync(
    "unshare",
    ["-n", "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
    {
      encoding: "utf8",
      timeout: 10_000,
    },
  );
  const reason =
    probe.status === 0
      ? ""
      : `needs root, unshare -n and veth (${(probe.stderr || String(probe.error)).trim()})`;
  if (reason) console.log(`guest network (netns): skipped: ${reason}`);

  it.skipIf(reason !== "")(
    "busybox ip applies ip= to a real eth0, and keeps an address that is already there",
    async () => {
      await image();
      const cmdline = join(h.root, "cmdline");
      await writeFile(
        cmdline,
        `${buildKernelCmdline({ arch: "arm64", network: { ...network, dns: ["9.9.9.9"] } })}\n`,
      );
      const env = { SBX_ROOT: h.root, SBX_BB: "/bin/busybox", SBX_CMDLINE_FILE: cmdline };
      const show =
        'echo "--addr"; /bin/busybox ip -4 addr show dev eth0; echo "--route"; /bin/busybox ip route';
      const fresh = inNetns(
        `/bin/busybox ip link add eth0 type veth peer name eth1 && . "$SBX_ROOT/.sbx/lib.sh" && sbx_setup_network && ${show}`,
        env,
      );
      expect(fresh.code, fresh.out).toBe(0);
      expect(fresh.out).toContain("configured 172.16.0.2/30 on eth0 from userspace");
      expect(fresh.out).toMatch(/inet 172\.16\.0\.2\/30 .*eth0/);
      expect(fresh.out).toMatch(/default via 172\.16\.0\.1 dev eth0/);
      expect(await readFile(join(h.root, "etc/resolv.conf"), "utf8")).toBe("nameserver 9.9.9.9\n");

      // What a kernel with IP_PNP leaves behind: the address is already configured.
      const pnp = inNetns(
        `/bin/busybox ip link add eth0 type veth peer name eth1 && /bin/busybox ip link set eth0 up && /bin/busybox ip addr add 172.16.0.2/30 dev eth0 && . "$SBX_ROOT/.sbx/lib.sh" && sbx_setup_network && ${show}`,
        env,
      );
      expect(pnp.code, pnp.out).toBe(0);
      expect(pnp.out).toContain("kernel applied ip= (IP_PNP)");
      expect(pnp.out.match(/inet 172\.16\.0\.2\//g)).toHaveLength(1);
    },
  );
});

describe("the agent's listener flags from the kernel command line", () => {
  it("defaults to vsock 1024, takes sbx.agent_vsock / sbx.agent_tcp, and ignores malformed values", async () => {
    await image();
    const cases: [string, string, string?][] = [
      ["console=ttyS0", "--vsock 1024"],
      ["sbx.agent_vsock=52", "--vsock 52"],
      ["sbx.agent_tcp=49983", "--vsock 1024 --tcp 49983"],
      ["sbx.agent_vsock=off sbx.agent_tcp=172.16.0.2:49983", "--tcp 172.16.0.2:49983"],
      ["sbx.agent_vsock=1;reboot", "", "ignoring sbx.agent_vsock=1;reboot"],
      ["sbx.agent_vsock=off sbx.agent_tcp=$(reboot)", "", "ignoring sbx.agent_tcp=$(reboot)"],
    ];
    for (const [cmdline, flags, warning] of cases) {
      const result = await h.run("", { cmdline, shellCode: 'printf "[%s]" "$(sbx_agent_args)"' });
      expect(result.stdout, cmdline).toContain(`[${flags}]`);
      if (warning) expect(result.stderr).toContain(warning);
    }
    expect(await calls()).not.toContain("reboot");
  });

  it("starts no agent when the image has none (the init's other steps are unchanged)", async () => {
    await image();
    const result = await h.run(".sbx/init", { cmdline: "console=ttyS0" });
    expect(result.code).toBe(0);
    expect(result.stdout).not.toContain("agent:");
  });
});

describe("/.sbx/init starts the agent and restarts it when it dies (PID and mount namespaces)", () => {
  const probe = spawnSync("unshare", ["-m", "-u", "-p", "-f", "true"], { encoding: "utf8", timeout: 10_000 });
  const reason =
    process.getuid?.() !== 0
      ? "needs root"
      : probe.status !== 0
        ? `unshare -m -u -p -f failed: ${(probe.stderr || String(probe.error)).trim()}`
        : "";
  if (reason) console.log(`init and agent (namespaces): skipped: ${reason}`);

  it.skipIf(reason !== "")(
    "keeps /.sbx/agent running with the cmdline's flags: each exit is logged and followed by a new start (needs root)",
    async () => {
      // Busybox stands in for the agent: run as /.sbx/agent it finds no "agent" applet and exits 127
      // at once, so every start is followed by an exit and a restart. (@sbx/agent's tests run the real
      // agent under this init.)
      await mkdir(join(h.root, "etc"), { recursive: true });
      await injectGuestFiles({
        root: h.root,
        busybox: "/bin/busybox",
        workload: ["/.sbx/bin/busybox", "sh", "-c", "sleep 2; echo workload-done"],
        systemd: false,
        agent: { path: "/bin/busybox", version: "0.0.0-test" },
      });
      await writeFile(join(h.root, "cmdline"), "console=ttyS0 sbx.agent_vsock=off sbx.agent_tcp=49983\n");
      const result = spawnSync("unshare", ["-m", "-u", "-p", "-f", "chroot", h.root, "/.sbx/init"], {
        env: {
          PATH: "/usr/sbin:/usr/bin:/sbin:/bin",
          SBX_CMDLINE_FILE: "/cmdline",
          SBX_AGENT_RESTART_DELAY: "0.2",
        },
        encoding: "utf8",
        timeout: 30_000,
      });
      const out = `${result.stdout}${result.stderr}`;
      expect(result.status, out).toBe(0);
      expect(out).toContain("agent: starting with --tcp 49983");
      expect(out).toContain("warning: the agent is not listening after 2 s");
      const restarts = out
        .split("\n")
        .filter((line) => line.includes("agent exited with status 127; restarting in 0.2s"));
      // About 2 s of waiting for its listeners and 2 s of workload at one start per 0.2 s.
      expect(restarts.length).toBeGreaterThanOrEqual(5);
      const lines = result.stdout.split("\n");
      expect(lines.indexOf(READY_MARKER)).toBeGreaterThan(-1);
      expect(result.stdout).toContain("workload-done");
      expect(await readFile("/proc/self/mountinfo", "utf8")).not.toContain(h.root);
    },
  );
});
