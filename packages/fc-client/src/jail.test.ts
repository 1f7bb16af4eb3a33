import { mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { cgroupLimitFiles, chooseCgroupVersion, jailCgroupDirs, readCgroupMounts } from "./cgroups.ts";
import { FirecrackerLaunchError } from "./errors.ts";
import { prepareJail } from "./jail.ts";
import { launchFirecracker } from "./launcher.ts";
import { fdCount, settledFdCount } from "./test-process-counts.ts";

const HYBRID_MOUNTS = [
  "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755",
  "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu",
  "33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct",
  "34 31 0:31 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory",
  "35 31 0:32 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids",
  "36 31 0:33 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd",
  "37 31 0:34 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw",
].join("\n");

describe("cgroup hierarchies", () => {
  it("parses v1 controllers (super-block options only) and the v2 mount from mountinfo", async () => {
    const mounts = await readCgroupMounts(HYBRID_MOUNTS);
    expect(mounts.map((m) => [m.version, m.path, m.controllers])).toEqual([
      [1, "/sys/fs/cgroup/cpu", ["cpu"]],
      [1, "/sys/fs/cgroup/cpu,cpuacct", ["cpu", "cpuacct"]],
      [1, "/sys/fs/cgroup/memory", ["memory"]],
      [1, "/sys/fs/cgroup/pids", ["pids"]],
      [1, "/sys/fs/cgroup/systemd", []],
      [2, "/sys/fs/cgroup/unified", []],
    ]);
  });

  it("chooses v1 on a hybrid host and v2 where the v2 tree offers the controllers", async () => {
    const hybrid = await readCgroupMounts(HYBRID_MOUNTS);
    expect(chooseCgroupVersion(hybrid, ["memory.limit_in_bytes"])).toBe(1);
    const pure = [{ version: 2 as const, path: "/sys/fs/cgroup", controllers: ["cpu", "memory", "pids"] }];
    expect(chooseCgroupVersion(pure, ["cpu.max", "memory.max", "pids.max"])).toBe(2);
    expect(jailCgroupDirs(pure, 2, ["cpu.max", "memory.max"], "sbx", "vm-1")).toEqual([
      "/sys/fs/cgroup/sbx/vm-1",
    ]);
  });

  it("names the per-VM directory in each v1 hierarchy, and refuses v2 when it lacks the controllers", async () => {
    const hybrid = await readCgroupMounts(HYBRID_MOUNTS);
    expect(
      jailCgroupDirs(hybrid, 1, ["cpu.shares", "memory.limit_in_bytes", "pids.max"], "sbx", "vm-1"),
    ).toEqual([
      "/sys/fs/cgroup/cpu/sbx/vm-1",
      "/sys/fs/cgroup/memory/sbx/vm-1",
      "/sys/fs/cgroup/pids/sbx/vm-1",
    ]);
    expect(() => jailCgroupDirs(hybrid, 2, ["memory.max"], "sbx", "vm-1")).toThrow(
      expect.objectContaining({
        code: "CGROUP_UNAVAILABLE",
        message: expect.stringMatching(/does not offer memory/),
      }),
    );
    expect(() => jailCgroupDirs(hybrid, 1, ["hugetlb.2MB.limit_in_bytes"], "sbx", "vm-1")).toThrow(
      /no cgroup v1 hierarchy has the hugetlb controller/,
    );
  });

  it("writes limits as each version's files", () => {
    expect(cgroupLimitFiles({ cpus: 1.5, memoryBytes: 512 * 2 ** 20, pids: 64 }, 1)).toEqual({
      "cpu.cfs_period_us": 100_000,
      "cpu.cfs_quota_us": 150_000,
      "memory.limit_in_bytes": 536_870_912,
      "pids.max": 64,
    });
    expect(cgroupLimitFiles({ cpus: 0.25, memoryBytes: 2 ** 30, pids: 32 }, 2)).toEqual({
      "cpu.max": "25000 100000",
      "memory.max": 1_073_741_824,
      "pids.max": 32,
    });
    expect(cgroupLimitFiles({}, 2)).toEqual({});
    expect(() => cgroupLimitFiles({ pids: 0 }, 1)).toThrow(/pids must be a positive number/);
  });

  it.skipIf(process.platform !== "linux")(
    "reads this host's mounts (v2 controllers from cgroup.controllers)",
    async () => {
      const mounts = await readCgroupMounts();
      expect(mounts.every((m) => m.path.startsWith("/"))).toBe(true);
    },
  );
});

describe("prepareJail and jailed launch options", () => {
  let dir: string;
  let jailer: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "sbx-jail-unit-"));
    jailer = join(dir, "jailer");
    await writeFile(jailer, "", { mode: 0o755 });
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const fc = (id = "vm-1") => ({ binary: "/opt/fc/firecracker", id, firecrackerArgs: ["--x", "/y"] });

  it("builds unshare → namespace init → jailer, places files by hard link, and removes the VM directory", async () => {
    const kernel = join(dir, "kernel");
    await writeFile(kernel, "k");
    const prepared = await prepareJail(
      { jailerBinary: jailer, uid: 4321, gid: 4322, chrootBaseDir: join(dir, "b"), files: { kernel } },
      fc(),
    );
    expect(prepared.binary).toBe("/usr/bin/unshare");
    expect(prepared.args.slice(0, 4)).toEqual(["--pid", "--fork", "--kill-child=SIGKILL", "--"]);
    const jailerAt = prepared.args.indexOf(jailer);
    expect(prepared.args.slice(jailerAt + 1)).toEqual(prepared.command.args);
    expect(prepared.command.args).toContain("--parent-cgroup");
    expect(prepared.command.args).not.toContain("--new-pid-ns");
    expect(prepared.command.args.slice(-4)).toEqual(["--api-sock", "/run/firecracker.socket", "--x", "/y"]);
    expect((await stat(prepared.jail.hostPath("/kernel"))).ino).toBe((await stat(kernel)).ino);
    // Not owned: a hard link shares the inode, and chowning it would change the source's owner.
    expect((await stat(kernel)).uid).toBe(process.getuid!());
    // A copy on request, owned by the jail's uid/gid while the source keeps its owner.
    const placed = await prepared.jail.place(
      { vmstate: kernel },
      { copied: ["vmstate"], owned: ["vmstate"] },
    );
    expect(placed).toEqual({ vmstate: "/vmstate" });
    const copy = await stat(prepared.jail.hostPath("/vmstate"));
    expect([copy.ino === (await stat(kernel)).ino, copy.uid, copy.gid]).toEqual([false, 4321, 4322]);
    expect((await stat(kernel)).uid).toBe(process.getuid!());
    await prepared.remove();
    await expect(stat(join(dir, "b", "firecracker", "vm-1"))).rejects.toThrow(/ENOENT/);
    expect((await stat(kernel)).size).toBe(1);
  });

  it("hard-links a listening Unix socket into the jail, and a client connects through the link", async () => {
    const before = fdCount();
    const socketPath = join(dir, "uffd.sock");
    const server = createServer((socket) => socket.end("served"));
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    try {
      const prepared = await prepareJail(
        {
          jailerBinary: jailer,
          uid: 0,
          gid: 0,
          chrootBaseDir: join(dir, "b"),
          files: { "uffd.sock": socketPath },
        },
        fc(),
      );
      const linked = prepared.jail.hostPath("/uffd.sock");
      expect((await stat(linked)).isSocket()).toBe(true);
      const reply = await new Promise<string>((resolve, reject) => {
        let text = "";
        const client = createConnection(linked);
        client.on("data", (chunk) => {
          text += chunk;
        });
        client.on("end", () => resolve(text));
        client.on("error", reject);
      });
      expect(reply).toBe("served");
      // A socket cannot be copied: placing it as a copy fails with a typed error.
      await expect(prepared.jail.place({ other: socketPath }, { copied: ["other"] })).rejects.toMatchObject({
        code: "JAIL_SETUP_FAILED",
      });
      await prepared.remove();
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
    expect(await settledFdCount(before)).toBe(before);
  });

  it("refuses what would fail later: an existing VM directory, a missing netns or jailer, a long socket path, v2 without controllers", async () => {
    const base = join(dir, "b");
    const first = await prepareJail({ jailerBinary: jailer, uid: 1, gid: 1, chrootBaseDir: base }, fc());
    await expect(
      prepareJail({ jailerBinary: jailer, uid: 1, gid: 1, chrootBaseDir: base }, fc()),
    ).rejects.toThrow(/already exists/);
    await first.remove();
    await expect(
      prepareJail(
        { jailerBinary: jailer, uid: 1, gid: 1, chrootBaseDir: base, netns: join(dir, "no-ns") },
        fc(),
      ),
    ).rejects.toThrow(/network namespace .* does not exist/);
    await expect(
      prepareJail({ jailerBinary: join(dir, "nope"), uid: 1, gid: 1, chrootBaseDir: base }, fc()),
    ).rejects.toMatchObject({ code: "BINARY_NOT_FOUND" });
    await expect(
      prepareJail(
        { jailerBinary: jailer, uid: 1, gid: 1, chrootBaseDir: join(dir, "x".repeat(40)) },
        fc("y".repeat(40)),
      ),
    ).rejects.toThrow(/Unix sockets allow 107/);
    const mounts = await readCgroupMounts();
    const v2 = mounts.find((m) => m.version === 2);
    if (v2 && !v2.controllers.includes("pids")) {
      await expect(
        prepareJail(
          {
            jailerBinary: jailer,
            uid: 1,
            gid: 1,
            chrootBaseDir: base,
            cgroupVersion: 2,
            cgroups: { "pids.max": 10 },
          },
          fc(),
        ),
      ).rejects.toMatchObject({ code: "CGROUP_UNAVAILABLE" });
    }
    await expect(stat(join(base, "firecracker", "vm-1"))).rejects.toThrow(/ENOENT/);
  });

  it("validates the jail options at the boundary: unknown keys, relative paths, bad ids, file names", async () => {
    const base = { jailerBinary: jailer, uid: 1, gid: 1, chrootBaseDir: join(dir, "b") };
    for (const [bad, pattern] of [
      [{ ...base, cgroup: { "pids.max": 1 } }, /jail: Unrecognized key.*cgroup/],
      [{ ...base, netns: "sbx-1" }, /jail.netns: must be an absolute path/],
      [{ ...base, uid: -1 }, /jail.uid/],
      [{ ...base, files: { "../x": "/etc/passwd" } }, /jail.files/],
      [{ ...base, cgroups: { "pids.max": "1\nmemory.max=0" } }, /jail.cgroups/],
    ] as const) {
      await expect(prepareJail(bad as never, fc())).rejects.toMatchObject({
        code: "INVALID_OPTIONS",
        message: expect.stringMatching(pattern),
      });
    }
    await expect(stat(join(dir, "b"))).rejects.toThrow(/ENOENT/);
  });

  it("launchFirecracker refuses socketPath or binaryArgs with a jail, and a missing setpriv", async () => {
    const jail = { jailerBinary: jailer, uid: 1, gid: 1, chrootBaseDir: join(dir, "b") };
    await expect(
      launchFirecracker({ binary: process.execPath, id: "a", jail, socketPath: join(dir, "s") }),
    ).rejects.toThrow(FirecrackerLaunchError);
    await expect(
      launchFirecracker({ binary: process.execPath, id: "a", jail, binaryArgs: ["x"] }),
    ).rejects.toThrow(/neither socketPath/);
    await expect(
      launchFirecracker({ binary: process.execPath, id: "a", setprivBinary: join(dir, "no-setpriv") }),
    ).rejects.toThrow(/setpriv.*dieWithOwner: false/);
  });
});
