// A real Linux guest, for real-KVM hosts: SBX_TEST_KERNEL (an uncompressed vmlinux on x86_64, an Image
// on aarch64) and SBX_TEST_ROOTFS (an ext4 root filesystem). On PVM machines like the CI's a stock
// kernel does not finish booting, so this runs only where those variables are set.
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { configureAndStart } from "./configure.ts";
import { launchFirecracker } from "./launcher.ts";
import { childPids, fdCount, settle } from "./test-process-counts.ts";
import { realFirecracker } from "./testing/real-firecracker.ts";

const { binary, skipReason: firecrackerSkip } = realFirecracker();
const kernel = process.env.SBX_TEST_KERNEL;
const rootfs = process.env.SBX_TEST_ROOTFS;
const skipReason =
  firecrackerSkip ??
  (!kernel || !rootfs ? "SBX_TEST_KERNEL and SBX_TEST_ROOTFS not set (real-KVM hosts only)" : undefined);
if (skipReason) console.log(`[fc-client] real-Linux guest test skipped: ${skipReason}`);

// Printed by every Linux kernel when it hands over to userspace.
const INIT = /Run \/\S+ as init process|Freeing unused kernel (image )?memory/;

describe.skipIf(skipReason !== undefined)(
  `a real Linux guest${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    it("boots to init, pauses, snapshots, restores from the files and runs on", async () => {
      expect(existsSync(kernel!) && existsSync(rootfs!)).toBe(true);
      const dir = await mkdtemp(join(tmpdir(), "sbx-real-linux-"));
      const before = { fds: fdCount(), children: childPids() };
      try {
        {
          await using fc = await launchFirecracker({
            binary: binary!,
            id: "sbx-linux-1",
            logPath: join(dir, "fc1.log"),
          });
          await configureAndStart(fc.client, {
            "boot-source": {
              kernel_image_path: kernel!,
              boot_args: "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw",
            },
            "machine-config": { vcpu_count: 1, mem_size_mib: 256 },
            drives: [{ drive_id: "rootfs", path_on_host: rootfs!, is_root_device: true, is_read_only: true }],
          });
          await fc.waitForConsole(INIT, { timeoutMs: 60_000 });
          await fc.client.patchVm({ state: "Paused" });
          await fc.client.createSnapshot({
            snapshot_type: "Full",
            snapshot_path: join(dir, "vmstate"),
            mem_file_path: join(dir, "mem"),
          });
        }
        await using restored = await launchFirecracker({
          binary: binary!,
          id: "sbx-linux-2",
          logPath: join(dir, "fc2.log"),
        });
        await restored.client.loadSnapshot({
          snapshot_path: join(dir, "vmstate"),
          mem_backend: { backend_type: "File", backend_path: join(dir, "mem") },
          resume_vm: true,
        });
        expect((await restored.client.describeInstance()).state).toBe("Running");
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
      await settle(100);
      expect(childPids()).toEqual(before.children);
      expect(fdCount()).toBeLessThanOrEqual(before.fds);
    });
  },
);
