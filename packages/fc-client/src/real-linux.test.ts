// A real Linux guest, for real-KVM hosts: SBX_TEST_KERNEL (an uncompressed vmlinux on x86_64, an Image
// on aarch64) and SBX_TEST_ROOTFS (an ext4 root filesystem with /bin/sh, dd and sha256sum, e.g.
// busybox). On PVM machines like the CI's a stock kernel does not finish booting, so this runs only
// where those variables are set.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { configureAndStart } from "./configure.ts";
import type { FirecrackerLaunchError } from "./errors.ts";
import { type FirecrackerProcess, launchFirecracker } from "./launcher.ts";
import { childPids, fdCount, settledFdCount } from "./test-process-counts.ts";
import { realFirecracker } from "./testing/real-firecracker.ts";

const kernel = process.env.SBX_TEST_KERNEL;
const rootfs = process.env.SBX_TEST_ROOTFS;
// Every unmet condition at once: FIRECRACKER_BIN, /dev/kvm, the kernel and the root filesystem.
const { binary, skipReason } = realFirecracker({
  files: { SBX_TEST_KERNEL: kernel, SBX_TEST_ROOTFS: rootfs },
});
if (skipReason) console.log(`[fc-client] real-Linux guest test skipped: ${skipReason} (real-KVM hosts only)`);

// Printed by every Linux kernel when it hands over to userspace.
const INIT = /Run \/\S+ as init process|Freeing unused kernel (image )?memory/;

// The guest's own shell on the serial console: 16 MiB of random bytes in devtmpfs (guest memory),
// hashed before the snapshot and again in the restored VM. Equal hashes prove the restored guest runs
// on the snapshot's memory, not merely that Firecracker reports "Running". Both commands are
// idempotent (the file is written once), so they can be typed again if the shell was not reading yet.
const MEMORY_FILE = "/dev/sbx-resume-check";
const fillAndHash = `mount -t devtmpfs devtmpfs /dev 2>/dev/null; [ -e ${MEMORY_FILE} ] || dd if=/dev/urandom of=${MEMORY_FILE} bs=4096 count=4096 2>/dev/null; echo "sbx-before=$(sha256sum <${MEMORY_FILE})"\n`;
const hashAgain = `echo "sbx-after=$(sha256sum <${MEMORY_FILE})"\n`;

async function guestHash(fc: FirecrackerProcess, command: string, marker: string): Promise<string> {
  // The console echoes the command too; only the shell's answer has 64 hex digits after the marker.
  const pattern = new RegExp(`${marker}=([0-9a-f]{64})`);
  for (let attempt = 1; ; attempt++) {
    fc.stdin.write(command);
    try {
      const { match } = await fc.waitForConsole(pattern, { timeoutMs: 5_000 });
      return match[1]!;
    } catch (error) {
      if ((error as FirecrackerLaunchError).code !== "CONSOLE_TIMEOUT" || attempt === 12) throw error;
    }
  }
}

describe.skipIf(skipReason !== undefined)(
  `a real Linux guest${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    it("boots to a shell, pauses, snapshots, and the restored guest hashes its memory to the same value", async () => {
      const dir = await mkdtemp(join(tmpdir(), "sbx-real-linux-"));
      const before = { fds: fdCount(), children: childPids() };
      try {
        let hashBefore: string;
        {
          await using fc = await launchFirecracker({
            binary: binary!,
            id: "sbx-linux-1",
            logPath: join(dir, "fc1.log"),
          });
          await configureAndStart(fc.client, {
            "boot-source": {
              kernel_image_path: kernel!,
              boot_args: "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda ro init=/bin/sh",
            },
            "machine-config": { vcpu_count: 1, mem_size_mib: 256 },
            drives: [{ drive_id: "rootfs", path_on_host: rootfs!, is_root_device: true, is_read_only: true }],
          });
          await fc.waitForConsole(INIT, { timeoutMs: 60_000 });
          hashBefore = await guestHash(fc, fillAndHash, "sbx-before");
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
        expect(await guestHash(restored, hashAgain, "sbx-after")).toBe(hashBefore);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
      expect(childPids()).toEqual(before.children);
      expect(await settledFdCount(before.fds)).toBe(before.fds);
    });
  },
);
