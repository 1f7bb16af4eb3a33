import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  stat,
  symlink,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { hostArch } from "@sbx/arch";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { RootfsError } from "./errors.ts";
import {
  GUEST_AGENT,
  GUEST_AGENT_VERSION_FILE,
  GUEST_BUSYBOX,
  injectGuestFiles,
  listBusyboxApplets,
  resolveInRoot,
  SETUP_NETWORK_UNIT,
} from "./guest-files.ts";

let base: string;
let root: string;
let outside: string;
beforeEach(async () => {
  base = await mkdtemp(join(tmpdir(), "sbx-inject-test-"));
  root = join(base, "root");
  outside = join(base, "outside");
  await mkdir(root);
  await mkdir(outside);
});
afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

/** Every path under dir with type, mode and content (or link target), to prove nothing changed. */
async function snapshot(dir: string): Promise<Map<string, string>> {
  const result = new Map<string, string>();
  async function walk(current: string): Promise<void> {
    for (const name of await readdir(current)) {
      const path = join(current, name);
      const st = await lstat(path);
      const key = relative(dir, path);
      if (st.isSymbolicLink()) result.set(key, `link:${await readlink(path)}`);
      else if (st.isDirectory()) {
        result.set(key, `dir:${st.mode.toString(8)}`);
        await walk(path);
      } else result.set(key, `file:${st.mode.toString(8)}:${(await readFile(path)).toString("base64")}`);
    }
  }
  await walk(dir);
  return result;
}

async function debianLikeImage(): Promise<void> {
  for (const d of ["usr/bin", "usr/sbin", "usr/lib/systemd", "etc/systemd/system", "proc"]) {
    await mkdir(join(root, d), { recursive: true });
  }
  await symlink("usr/bin", join(root, "bin"));
  await symlink("usr/sbin", join(root, "sbin"));
  await writeFile(join(root, "usr/bin/sh"), "#!image's own sh\n", { mode: 0o755 });
  await writeFile(join(root, "usr/bin/ip"), "image's own ip\n", { mode: 0o755 });
  await writeFile(join(root, "usr/lib/systemd/systemd"), "systemd\n", { mode: 0o755 });
  await symlink("/usr/lib/systemd/systemd", join(root, "usr/sbin/init"));
  await writeFile(join(root, "etc/resolv.conf"), "nameserver 192.0.2.53\n");
}

describe("listBusyboxApplets", () => {
  it("reads the applet table without running busybox, matching `busybox --list`", async () => {
    const listed = execFileSync("/bin/busybox", ["--list"], { encoding: "utf8" }).trim().split("\n");
    expect(await listBusyboxApplets("/bin/busybox")).toEqual(listed);
  });

  it("refuses a binary without an applet table", async () => {
    await expect(listBusyboxApplets("/bin/ls")).rejects.toMatchObject({ code: "INJECT_FAILED" });
  });
});

describe("injectGuestFiles", () => {
  it("digests every generated guest file, leaving the build clock out: equal inputs, equal digest", async () => {
    const digestOf = async (options: { buildEpochSeconds: number; provisionScript?: string }) => {
      const dir = join(base, `digest-${Math.random().toString(16).slice(2)}`);
      await mkdir(dir);
      const result = await injectGuestFiles({ root: dir, busybox: { path: "/bin/busybox" }, ...options });
      expect(result.guestFilesSha256).toMatch(/^[0-9a-f]{64}$/);
      return result.guestFilesSha256;
    };
    const first = await digestOf({ buildEpochSeconds: 1_000 });
    expect(await digestOf({ buildEpochSeconds: 2_000_000 })).toBe(first);
    expect(await digestOf({ buildEpochSeconds: 1_000, provisionScript: "apk add curl\n" })).not.toBe(first);
  });

  it("adds /.sbx without changing any of the image's files, and enables setup-network.service for systemd", async () => {
    await debianLikeImage();
    const before = await snapshot(root);
    const result = await injectGuestFiles({
      root,
      busybox: { path: "/bin/busybox" },
      provisionScript: "apt-get update\n",
    });
    expect(result.workload).toEqual(["/sbin/init"]);
    expect(result.systemd).toBe(true);
    expect(result.init).toBe("/.sbx/init");
    const after = await snapshot(root);
    for (const [path, value] of before) expect(after.get(path), path).toBe(value);
    const added = [...after.keys()].filter((p) => !before.has(p));
    const outsideSbx = added.filter((p) => !p.startsWith(".sbx"));
    expect(outsideSbx.sort()).toEqual([
      "dev",
      "etc/systemd/system/multi-user.target.wants",
      "etc/systemd/system/multi-user.target.wants/setup-network.service",
      "etc/systemd/system/setup-network.service",
      "run",
      "sys",
      "tmp",
    ]);
    expect((await stat(join(root, "tmp"))).mode & 0o7777).toBe(0o1777);
    expect(
      await readlink(join(root, "etc/systemd/system/multi-user.target.wants/setup-network.service")),
    ).toBe(SETUP_NETWORK_UNIT);
    const unit = await readFile(join(root, SETUP_NETWORK_UNIT), "utf8");
    expect(unit).toContain("ExecStart=/.sbx/bin/busybox sh /.sbx/setup-network");
    expect(unit).toContain("WantedBy=multi-user.target");
    // The image's own ip stays; busybox's ip link lives only under /.sbx/bin.
    expect(await readFile(join(root, "usr/bin/ip"), "utf8")).toBe("image's own ip\n");
    expect(await readlink(join(root, ".sbx/bin/ip"))).toBe("busybox");
    const links = (await readdir(join(root, ".sbx/bin"))).filter((n) => n !== "busybox");
    expect(links.sort()).toEqual([...result.applets].sort());
    expect((await stat(join(root, GUEST_BUSYBOX))).mode & 0o777).toBe(0o755);
    expect(await readFile(join(root, ".sbx/provision.sh"), "utf8")).toBe("apt-get update\n");
    expect(await readFile(join(root, ".sbx/init"), "utf8")).toMatch(
      /^#!\/.sbx\/bin\/busybox sh\n[\s\S]*exec '\/sbin\/init'\n$/,
    );
  });

  it("checks a resolved busybox's sha256 again against the bytes it copies", async () => {
    const error = await injectGuestFiles({
      root,
      busybox: { path: "/bin/busybox", sha256: "0".repeat(64) },
    }).catch((e: unknown) => e);
    expect((error as RootfsError).code).toBe("BUSYBOX_CHECKSUM_MISMATCH");
    await expect(lstat(join(root, ".sbx"))).rejects.toThrow(/ENOENT/);
  });

  it("refuses an image that already has /.sbx", async () => {
    await mkdir(join(root, ".sbx"));
    await expect(injectGuestFiles({ root, busybox: "/bin/busybox" })).rejects.toMatchObject({
      code: "INJECT_FAILED",
    });
  });

  it("keeps writes inside the root when the image plants symlinks to the outside", async () => {
    await mkdir(join(root, "etc"), { recursive: true });
    await symlink(outside, join(root, "etc/systemd"));
    await symlink("../../../../..", join(root, "tmp"));
    await symlink(join(outside, "dev"), join(root, "dev"));
    await injectGuestFiles({ root, busybox: "/bin/busybox", workload: ["/bin/true"], systemd: true });
    expect(await readdir(outside)).toEqual([]);
    // The absolute link target was resolved inside the root instead.
    const unit = await resolveInRoot(root, SETUP_NETWORK_UNIT);
    expect(unit.startsWith(`${root}/`)).toBe(true);
    expect(await readFile(unit, "utf8")).toContain("[Unit]");
  });

  it("refuses a different setup-network.service the image already has", async () => {
    await mkdir(join(root, "etc/systemd/system"), { recursive: true });
    await writeFile(join(root, SETUP_NETWORK_UNIT), "[Unit]\nDescription=the image's own\n");
    const error = await injectGuestFiles({ root, busybox: "/bin/busybox", systemd: true }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(RootfsError);
    expect((error as RootfsError).message).toMatch(/already has a different/);
    // The failed injection took its /.sbx away again, so a corrected retry can run.
    await expect(lstat(join(root, ".sbx"))).rejects.toThrow(/ENOENT/);
    expect(await readFile(join(root, SETUP_NETWORK_UNIT), "utf8")).toContain("the image's own");
  });

  it("picks /bin/sh, then busybox sh, as the default workload, and skips systemd for non-systemd images", async () => {
    const bare = await injectGuestFiles({ root, busybox: "/bin/busybox" });
    expect(bare.workload).toEqual(["/.sbx/bin/busybox", "sh"]);
    expect(bare.systemd).toBe(false);
    await rm(join(root, ".sbx"), { recursive: true });
    await mkdir(join(root, "bin"));
    await writeFile(join(root, "bin/sh"), "", { mode: 0o755 });
    expect((await injectGuestFiles({ root, busybox: "/bin/busybox" })).workload).toEqual(["/bin/sh"]);
  });
});

describe("resolveInRoot", () => {
  it("follows links inside the root and confines .. and absolute targets", async () => {
    await mkdir(join(root, "usr/bin"), { recursive: true });
    await symlink("usr/bin", join(root, "bin"));
    await symlink("/../../etc", join(root, "escape"));
    await symlink("loop2", join(root, "loop1"));
    await symlink("loop1", join(root, "loop2"));
    expect(await resolveInRoot(root, "/bin/sh")).toBe(join(root, "usr/bin/sh"));
    expect(await resolveInRoot(root, "/../../../etc/passwd")).toBe(join(root, "etc/passwd"));
    expect(await resolveInRoot(root, "/escape/shadow")).toBe(join(root, "etc/shadow"));
    await expect(resolveInRoot(root, "/loop1/x")).rejects.toMatchObject({ code: "INJECT_FAILED" });
  });
});

describe("injectGuestFiles with the guest agent", () => {
  const agentVersion = "0.1.0";
  // A static binary of the host's arch stands in for the agent: the checks are about the bytes.
  const staticBinary = "/bin/busybox";

  it("installs /.sbx/agent (0755) and records its version and sha256", async () => {
    const sha256 = createHash("sha256")
      .update(await readFile(staticBinary))
      .digest("hex");
    const result = await injectGuestFiles({
      root,
      busybox: "/bin/busybox",
      systemd: false,
      agent: { path: staticBinary, version: agentVersion, sha256, arch: hostArch() },
    });
    expect(result.files).toEqual(expect.arrayContaining([GUEST_AGENT, GUEST_AGENT_VERSION_FILE]));
    const installed = await stat(join(root, GUEST_AGENT));
    expect(installed.mode & 0o7777).toBe(0o755);
    expect((await readFile(join(root, GUEST_AGENT))).equals(await readFile(staticBinary))).toBe(true);
    expect(await readFile(join(root, GUEST_AGENT_VERSION_FILE), "utf8")).toBe(`${agentVersion} ${sha256}\n`);
  });

  it("installs no agent unless asked", async () => {
    const result = await injectGuestFiles({ root, busybox: "/bin/busybox", systemd: false });
    expect(result.files).not.toContain(GUEST_AGENT);
    await expect(stat(join(root, GUEST_AGENT))).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("refuses an agent whose bytes do not match its sha256, of another arch, or dynamically linked, writing nothing", async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ path: staticBinary, version: agentVersion, sha256: "0".repeat(64) }, "checksum"],
      [
        { path: staticBinary, version: agentVersion, arch: hostArch() === "amd64" ? "arm64" : "amd64" },
        "arch",
      ],
      [{ path: "/bin/ls", version: agentVersion, arch: hostArch() }, "not-static"],
    ];
    for (const [agent, reason] of cases) {
      const error = await injectGuestFiles({
        root,
        busybox: "/bin/busybox",
        systemd: false,
        agent: agent as { path: string; version: string },
      }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(RootfsError);
      expect((error as RootfsError).code).toBe("INJECT_FAILED");
      expect((error as RootfsError).details.reason).toBe(reason);
      await expect(lstat(join(root, ".sbx"))).rejects.toMatchObject({ code: "ENOENT" });
    }
    await expect(
      injectGuestFiles({ root, busybox: "/bin/busybox", agent: { path: staticBinary, version: "1 2" } }),
    ).rejects.toMatchObject({ code: "INVALID_OPTIONS" });
  });
});
