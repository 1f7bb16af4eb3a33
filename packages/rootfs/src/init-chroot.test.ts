// Runs the injected /.sbx/init for real, as PID 1 of fresh mount, UTS, network and PID namespaces,
// chrooted into an injected tree: the shebang, busybox applets, mounts, hostname and ip= network are
// exercised against the real kernel. No sbx.epoch (setting the clock is not namespaced) and no
// provisioning (reboot) here; those paths are covered with stubs in guest-scripts.test.ts.
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { injectGuestFiles } from "./guest-files.ts";
import { READY_MARKER } from "./guest-scripts.ts";
import { buildKernelCmdline } from "./kernel-cmdline.ts";

const probe = spawnSync("unshare", ["-m", "-u", "-n", "-p", "-f", "true"], {
  encoding: "utf8",
  timeout: 10_000,
});
const reason =
  process.getuid?.() !== 0
    ? "needs root"
    : probe.status !== 0
      ? `unshare -m -u -n -p -f failed: ${(probe.stderr || String(probe.error)).trim()}`
      : "";
if (reason) console.log(`init in namespaces: skipped: ${reason}`);

let base: string;
beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), "sbx-init-chroot-"));
});
afterAll(async () => {
  // The mount namespace died with its last process; refuse to delete anything still mounted.
  const mounts = await readFile("/proc/self/mountinfo", "utf8");
  if (!mounts.includes(base)) await rm(base, { recursive: true, force: true });
});

describe.skipIf(reason !== "")("/.sbx/init as PID 1 in namespaces", () => {
  it("mounts, sets the hostname, configures ip= with busybox, prints ready and execs the workload", async () => {
    const root = join(base, "root");
    await mkdir(join(root, "etc"), { recursive: true });
    await writeFile(join(root, "etc/resolv.conf"), "nameserver 192.0.2.53\n");
    const workload = [
      "/.sbx/bin/busybox",
      "sh",
      "-c",
      'echo "pid=$$"; echo "host=$(hostname)"; echo "path=$PATH"; ip -4 addr show dev eth0; ip route; cut -d" " -f3 /proc/mounts; cat /etc/resolv.conf',
    ];
    await injectGuestFiles({ root, busybox: "/bin/busybox", workload, systemd: false });
    const cmdline = buildKernelCmdline({
      arch: "amd64",
      network: {
        clientIp: "172.16.0.2",
        gatewayIp: "172.16.0.1",
        prefixLength: 30,
        hostname: "chroot-box",
        dns: ["9.9.9.9"],
      },
    });
    await writeFile(join(root, "cmdline"), `${cmdline}\n`);
    const result = spawnSync(
      "unshare",
      [
        "-m",
        "-u",
        "-n",
        "-p",
        "-f",
        "sh",
        "-c",
        'ip link add eth0 type veth peer name eth1 && exec chroot "$1" /.sbx/init',
        "sh",
        root,
      ],
      {
        env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", SBX_CMDLINE_FILE: "/cmdline" },
        encoding: "utf8",
        timeout: 30_000,
      },
    );
    const out = `${result.stdout}${result.stderr}`;
    if (process.env.SBX_SHOW) console.log(out);
    expect(result.status, out).toBe(0);
    const lines = result.stdout.split("\n");
    const ready = lines.indexOf(READY_MARKER);
    expect(ready, out).toBeGreaterThan(-1);
    expect(lines[ready + 1]).toBe("pid=1");
    expect(result.stdout).toContain("host=chroot-box");
    expect(result.stdout).toContain(
      "path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/.sbx/bin",
    );
    expect(result.stdout).toMatch(/inet 172\.16\.0\.2\/30 .*eth0/);
    expect(result.stdout).toMatch(/default via 172\.16\.0\.1 dev eth0/);
    for (const fs of ["proc", "sysfs", "devtmpfs", "devpts", "tmpfs"]) expect(lines).toContain(fs);
    expect(result.stdout).toContain("nameserver 9.9.9.9");
    expect(await readFile(join(root, "etc/resolv.conf"), "utf8")).toBe("nameserver 9.9.9.9\n");
    expect(await readFile("/proc/self/mountinfo", "utf8")).not.toContain(root);
  });
});
