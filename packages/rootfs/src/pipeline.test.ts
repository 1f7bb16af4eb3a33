// The whole template-build path of this package on a small image: OCI layout (directory and tar) →
// unpackImage → resolveBusybox → injectGuestFiles → buildExt4Image, checked with debugfs.
import { execFileSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolveBusybox } from "./busybox.ts";
import { buildExt4Image } from "./ext4.ts";
import { injectGuestFiles } from "./guest-files.ts";
import { buildKernelCmdline } from "./kernel-cmdline.ts";
import { readOciLayout } from "./oci-layout.ts";
import { ext4List, ext4ReadFile, ext4Stat, writeBusyboxFixture, writeOciLayout } from "./testing/index.ts";
import { unpackImage } from "./unpack.ts";

const isRoot = process.getuid?.() === 0;
let base: string;
let layoutDir: string;
let layoutTar: string;
let busyboxDir: string;
beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), "sbx-pipeline-test-"));
  layoutDir = join(base, "layout");
  busyboxDir = join(base, "busybox");
  await writeBusyboxFixture({ dir: busyboxDir, arch: "amd64" });
  await writeOciLayout({
    dir: layoutDir,
    images: [
      {
        platform: { os: "linux", architecture: "amd64" },
        layers: [
          {
            compression: "gzip",
            entries: [
              { path: "usr/", type: "directory", mode: 0o755 },
              { path: "usr/bin/", type: "directory", mode: 0o755 },
              { path: "usr/bin/app", content: "#!/bin/sh\necho app\n", mode: 0o755, uid: 1000, gid: 1000 },
              { path: "bin", type: "symlink", linkPath: "usr/bin" },
              { path: "etc/", type: "directory", mode: 0o755 },
              { path: "etc/resolv.conf", content: "nameserver 192.0.2.1\n", mode: 0o644 },
              { path: "etc/old", content: "removed by layer 2\n" },
            ],
          },
          {
            compression: "zstd",
            entries: [
              { path: "etc/.wh.old", content: "" },
              { path: "etc/motd", content: "hello\n", mode: 0o600 },
            ],
          },
        ],
      },
    ],
  });
  layoutTar = join(base, "layout.tar");
  execFileSync("tar", ["-cf", layoutTar, "-C", layoutDir, "."]);
});
afterAll(async () => {
  await rm(base, { recursive: true, force: true });
});

describe("OCI image → bootable-shaped ext4", () => {
  for (const kind of ["directory", "tar"] as const) {
    it(`from an OCI layout ${kind}`, async () => {
      const staging = join(base, `staging-${kind}`);
      const output = join(base, `rootfs-${kind}.ext4`);
      const layout = await readOciLayout(kind === "directory" ? layoutDir : layoutTar);
      await unpackImage({ layout, platform: "amd64", dest: staging });
      const busybox = await resolveBusybox({ dir: busyboxDir, arch: "amd64" });
      const guest = await injectGuestFiles({
        root: staging,
        busybox,
        workload: ["/usr/bin/app"],
        provisionScript: "echo provisioning\n",
      });
      await buildExt4Image({ sourceDir: staging, output });

      expect(await ext4List(output, "/etc")).toEqual(["motd", "resolv.conf"]);
      expect(await ext4Stat(output, "/usr/bin/app")).toMatchObject({
        type: "regular",
        mode: 0o755,
        ...(isRoot ? { uid: 1000, gid: 1000 } : {}),
      });
      expect(await ext4Stat(output, "/etc/motd")).toMatchObject({ mode: 0o600 });
      expect(await ext4Stat(output, "/bin")).toMatchObject({ type: "symlink", linkTarget: "usr/bin" });
      expect((await ext4ReadFile(output, "/etc/resolv.conf")).toString()).toBe("nameserver 192.0.2.1\n");
      expect(await ext4Stat(output, "/.sbx/bin/busybox")).toMatchObject({
        type: "regular",
        mode: 0o755,
        ...(isRoot ? { uid: 0 } : {}),
      });
      expect((await ext4ReadFile(output, "/.sbx/init")).toString()).toContain("exec '/usr/bin/app'");
      expect((await ext4ReadFile(output, "/.sbx/provision.sh")).toString()).toBe("echo provisioning\n");
      for (const dir of ["/proc", "/sys", "/dev", "/run", "/tmp"]) {
        expect((await ext4Stat(output, dir)).type).toBe("directory");
      }
      expect(buildKernelCmdline({ arch: "amd64", init: guest.init })).toContain("init=/.sbx/init");
    });
  }
});
