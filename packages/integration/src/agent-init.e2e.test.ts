// The template's real boot path without a VM: @sbx/rootfs injects busybox, /.sbx/init and this agent
// into a root; /.sbx/init runs as PID 1 of fresh mount, UTS and PID namespaces inside a network
// namespace whose eth0 it configures from ip=, starts the agent from the sbx.agent_* flags, prints the
// ready marker and execs the workload. The host reaches the agent over TCP, kills it, and the init's
// loop starts it again while the client reconnects.
import { type ChildProcess, execFileSync, spawnSync } from "node:child_process";
import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AgentClient, ensureAgentBinary, tcpTransport } from "@sbx/agent";
import {
  createVethNamespace,
  namespacedAgentUnavailable,
  removeNamespacedRun,
  settle,
  spawnInNamespacedChroot,
} from "@sbx/agent/testing";
import { hostArch } from "@sbx/arch";
import { injectGuestFiles, READY_MARKER } from "@sbx/rootfs";
import { describe, expect, it } from "vitest";
import { expectBackTo, ownedCounts } from "./test-leaks.ts";

const networkNamespaces = (prefix: string): string[] =>
  spawnSync("ip", ["netns", "list"], { encoding: "utf8" })
    .stdout.split("\n")
    .map((line) => line.split(" ")[0] ?? "")
    .filter((name) => name.startsWith(prefix));

const reason = namespacedAgentUnavailable();
if (reason) console.log(`agent under /.sbx/init: skipped: ${reason}`);
const tag = `i${process.pid.toString(36)}`;

describe.skipIf(reason !== "")("the agent under the template's /.sbx/init (needs root, unshare, ip)", () => {
  it("is started from sbx.agent_tcp, answers over the network /.sbx/init configured, and is restarted when killed", async () => {
    const before = { ...ownedCounts(), netns: networkNamespaces(`sbx-agent-${tag}`).length };
    const base = await mkdtemp(join(tmpdir(), "sbx-agent-init-"));
    const root = join(base, "root");
    const netns = `sbx-agent-${tag}`;
    const hostIf = `sbxih${tag}`.slice(0, 15);
    const guestIf = `sbxig${tag}`.slice(0, 15);
    const subnet = `10.${150 + (process.pid % 40)}.${process.pid % 250}`;
    let init: ChildProcess | undefined;
    let consoleText = () => "";
    try {
      await mkdir(join(root, "etc"), { recursive: true });
      await writeFile(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
      const agent = await ensureAgentBinary(hostArch());
      const injected = await injectGuestFiles({
        root,
        busybox: "/bin/busybox",
        workload: ["/.sbx/bin/busybox", "sleep", "3600"],
        systemd: false,
        agent: { path: agent.path, version: agent.version, sha256: agent.sha256, arch: agent.arch },
      });
      expect(injected.files).toContain("/.sbx/agent");
      await writeFile(
        join(root, "cmdline"),
        `console=ttyS0 ip=${subnet}.2::${subnet}.1:255.255.255.252:sbx-init-box:eth0:off sbx.agent_vsock=off sbx.agent_tcp=49983\n`,
      );
      createVethNamespace({ netns, hostIf, guestIf, hostAddress: `${subnet}.1/30` });
      // The guest's init configures eth0 from the kernel command line's ip=.
      execFileSync("ip", ["-n", netns, "link", "set", guestIf, "name", "eth0"]);
      const spawned = spawnInNamespacedChroot({
        netns,
        root,
        command: ["/.sbx/init"],
        uts: true,
        env: { SBX_CMDLINE_FILE: "/cmdline", SBX_AGENT_RESTART_DELAY: "0.2" },
      });
      init = spawned.child;
      consoleText = spawned.output;
      expect(
        await settle(
          () => consoleText().includes(READY_MARKER),
          (ready) => ready,
          20_000,
        ),
        consoleText(),
      ).toBe(true);
      // The ready marker comes after the agent's listeners are up.
      expect(consoleText()).toContain("agent: starting with --tcp 49983");
      expect(consoleText()).not.toContain("not listening after");

      await using client = new AgentClient(tcpTransport({ host: `${subnet}.2`, port: 49983 }));
      // The image has no /bin/sh; the agent's default PATH ends with /.sbx/bin, like the init's.
      await expect(client.commands.run("true")).rejects.toMatchObject({ code: "COMMAND_NOT_FOUND" });
      const result = await client.commands.run([
        "sh",
        "-c",
        "uname -s; hostname; cat /proc/1/cmdline | tr '\\0' ' '",
      ]);
      expect(result.stdout.split("\n").slice(0, 3)).toEqual([
        "Linux",
        "sbx-init-box",
        "/.sbx/bin/busybox sleep 3600 ",
      ]);
      const first = (await client.hello()).pid;
      await client.commands.run(["/.sbx/bin/busybox", "kill", "-9", String(first)]).catch(() => undefined);
      // The next call finds the connection reset, reconnects (retrying while the agent restarts) and succeeds.
      expect((await client.health()).uptimeMs).toBeLessThan(10_000);
      expect((await client.hello()).pid).not.toBe(first);
      expect(consoleText()).toMatch(/agent exited with status 137; restarting/);
    } finally {
      await removeNamespacedRun({ child: init, netns, hostIf, base });
    }
    expect(networkNamespaces(`sbx-agent-${tag}`)).toHaveLength(before.netns);
    await expectBackTo(before);
  }, 90_000);
});
