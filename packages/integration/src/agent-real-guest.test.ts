// The agent in a real Linux guest, for real-KVM hosts: SBX_TEST_KERNEL (an uncompressed vmlinux on
// x86_64, an Image on aarch64) and SBX_TEST_ROOTFS (an ext4 root filesystem with busybox) with
// FIRECRACKER_BIN. The agent is written into a copy of the root filesystem (debugfs) and booted as
// init with a vsock listener; the host runs `uname -a` through Firecracker's hybrid-vsock socket,
// pauses and snapshots the VM, restores it in a new Firecracker, and runs it again over vsock. On PVM
// machines like the CI's a stock kernel does not finish booting, so this is skipped there.
import { execFileSync } from "node:child_process";
import { copyFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AgentClient, ensureAgentBinary, firecrackerVsockTransport } from "@sbx/agent";
import { hostArch } from "@sbx/arch";
import { configureAndStart, launchFirecracker } from "@sbx/fc-client";
import { realFirecracker } from "@sbx/fc-client/testing";
import { describe, expect, it } from "vitest";
import { expectBackTo, ownedCounts } from "./test-leaks.ts";

const kernel = process.env.SBX_TEST_KERNEL;
const rootfs = process.env.SBX_TEST_ROOTFS;
const { binary, skipReason } = realFirecracker({
  files: { SBX_TEST_KERNEL: kernel, SBX_TEST_ROOTFS: rootfs },
});
if (skipReason) console.log(`[agent] real-guest test skipped: ${skipReason} (real-KVM hosts only)`);
const PORT = 1024;

describe.skipIf(skipReason !== undefined)(
  `the agent in a real Linux guest${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    it("runs uname -a over vsock, then again after pause, snapshot and restore", async () => {
      const dir = await mkdtemp(join(tmpdir(), "sbx-agent-real-"));
      const before = ownedCounts();
      try {
        const agent = await ensureAgentBinary(hostArch());
        const image = join(dir, "rootfs.ext4");
        await copyFile(rootfs!, image);
        execFileSync("debugfs", ["-w", "-R", `write ${agent.path} sbx-agent`, image]);
        execFileSync("debugfs", ["-w", "-R", "sif /sbx-agent mode 0100755", image]);
        const udsPath = join(dir, "v.sock");
        let first: string;
        {
          await using fc = await launchFirecracker({
            binary: binary!,
            id: "sbx-agent-real-1",
            logPath: join(dir, "fc1.log"),
          });
          await configureAndStart(fc.client, {
            "boot-source": {
              kernel_image_path: kernel!,
              // The agent is PID 1: it reaps every orphan, and its flags follow `--`.
              boot_args: `console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw init=/sbx-agent -- --vsock ${PORT}`,
            },
            "machine-config": { vcpu_count: 1, mem_size_mib: 256 },
            drives: [{ drive_id: "rootfs", path_on_host: image, is_root_device: true, is_read_only: false }],
            vsock: { guest_cid: 3, uds_path: udsPath },
          });
          await using client = new AgentClient(firecrackerVsockTransport({ udsPath, port: PORT }), {
            connectTimeoutMs: 60_000,
          });
          const result = await client.commands.run("uname -a");
          expect(result.exitCode).toBe(0);
          first = result.stdout;
          expect(first).toMatch(/^Linux /);
          // The snapshot's clock an hour behind: only afterRestore's setClock can bring it back.
          await client.setClock(new Date(Date.now() - 3_600_000));
          expect((await client.health()).epochMs).toBeLessThan(Date.now() - 3_000_000);
          await fc.client.patchVm({ state: "Paused" });
          await fc.client.createSnapshot({
            snapshot_type: "Full",
            snapshot_path: join(dir, "vmstate"),
            mem_file_path: join(dir, "mem"),
          });
        }
        await rm(udsPath, { force: true });
        await using restored = await launchFirecracker({
          binary: binary!,
          id: "sbx-agent-real-2",
          logPath: join(dir, "fc2.log"),
        });
        await restored.client.loadSnapshot({
          snapshot_path: join(dir, "vmstate"),
          mem_backend: { backend_type: "File", backend_path: join(dir, "mem") },
          resume_vm: true,
        });
        await using again = new AgentClient(firecrackerVsockTransport({ udsPath, port: PORT }), {
          connectTimeoutMs: 30_000,
        });
        await again.afterRestore();
        const second = await again.commands.run("uname -a");
        expect(second).toMatchObject({ exitCode: 0, stdout: first });
        expect(Math.abs((await again.health()).epochMs - Date.now())).toBeLessThan(5_000);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
      await expectBackTo(before);
    }, 180_000);
  },
);
