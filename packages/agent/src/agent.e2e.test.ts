// The real agent, chrooted in a busybox root inside its own mount, PID and network namespaces,
// driven end to end through AgentClient over TCP (its network namespace), a Unix socket and a
// hybrid-vsock CONNECT proxy.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { hostArch } from "@sbx/arch";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureAgentBinary } from "./agent-binary.ts";
import { AgentClient } from "./client.ts";
import { AgentError } from "./errors.ts";
import { childProcesses, descendantNamed, networkNamespaces, openFds } from "./test-counts.ts";
import { startHybridVsockProxy } from "./testing/hybrid-vsock-proxy.ts";
import {
  type NamespacedAgent,
  namespacedAgentUnavailable,
  settle,
  startNamespacedAgent,
} from "./testing/namespaced-agent.ts";
import { firecrackerVsockTransport } from "./transport.ts";

const reason = namespacedAgentUnavailable();
if (reason) console.log(`agent end to end: skipped: ${reason}`);
const noStrace = spawnSync("strace", ["-V"]).status === 0 ? "" : "needs strace";
const netnsPrefix = `sbx-agent-${process.pid.toString(36)}`;

describe.skipIf(reason !== "")("agent in namespaces, end to end (needs root, unshare, ip)", () => {
  let agent: NamespacedAgent;
  let client: AgentClient;
  let before: { fds: number; children: number; netns: number };

  beforeAll(async () => {
    const binary = await ensureAgentBinary(hostArch());
    before = {
      fds: openFds(),
      children: childProcesses().length,
      netns: networkNamespaces(netnsPrefix).length,
    };
    agent = await startNamespacedAgent({ agent: binary.path });
    client = new AgentClient(agent.tcp());
  }, 60_000);

  afterAll(async () => {
    await client?.close();
    await agent?.[Symbol.asyncDispose]();
    // Nothing the tests started survives them: sockets, the namespace's processes, the netns.
    expect(
      await settle(
        () => openFds(),
        (n) => n <= before.fds,
      ),
    ).toBeLessThanOrEqual(before.fds);
    expect(
      await settle(
        () => childProcesses().length,
        (n) => n <= before.children,
      ),
    ).toBe(before.children);
    expect(networkNamespaces(netnsPrefix)).toHaveLength(before.netns);
  });

  it("runs a command over TCP in the agent's network namespace: stdout, stderr, exit code", async () => {
    const result = await client.commands.run("echo out; echo err >&2; exit 7");
    expect(result).toMatchObject({ exitCode: 7, signal: null, stdout: "out\n", stderr: "err\n" });
    const hello = await client.hello();
    expect(hello.version).toBe(1);
    expect(hello.machine).toBe(execFileSync("uname", ["-m"], { encoding: "utf8" }).trim());
  });

  it("is PID namespaced and chrooted: the agent's parent is the namespace's init", async () => {
    const result = await client.commands.run("echo $PPID; cat /proc/1/cmdline | tr '\\0' ' '; ls /");
    const [ppidLine, initLine] = result.stdout.split("\n");
    expect(Number(ppidLine)).toBeGreaterThan(1);
    expect(initLine).toContain("/.sbx/test-init");
    expect(result.stdout).toContain("home");
  });

  it("passes argv, env, cwd and user; a missing program is COMMAND_NOT_FOUND", async () => {
    const result = await client.commands.run(
      [
        "/bin/sh",
        "-c",
        'printf "%s|%s|%s|%s|%s" "$1" "$GREETING" "$(pwd)" "$(id -u):$(id -g):$(id -G)" "$HOME"',
        "sh",
        "a b",
      ],
      {
        env: { GREETING: "hi there" },
        cwd: "/tmp",
        user: "sbx",
      },
    );
    expect(result.stdout).toBe("a b|hi there|/tmp|1000:1000:1000 2000|/home/sbx");
    const byUid = await client.commands.run("id -u; pwd", { user: 1001 });
    expect(byUid.stdout).toBe("1001\n/home/other\n");
    await expect(client.commands.run(["/nope/missing"])).rejects.toMatchObject({ code: "COMMAND_NOT_FOUND" });
    await expect(client.commands.run("true", { user: "nobody-here" })).rejects.toMatchObject({
      code: "USER_NOT_FOUND",
    });
    await expect(client.commands.run("true", { cwd: "/no/such/dir" })).rejects.toMatchObject({
      code: "FILE_NOT_FOUND",
    });
  });

  it("streams stdin to a process and delivers EOF when it is closed", async () => {
    const handle = await client.commands.start(["sh", "-c", "wc -c; echo after-eof"]);
    const chunk = Buffer.alloc(3 << 20, 0x61);
    await handle.writeStdin(chunk);
    await handle.writeStdin("tail");
    await handle.closeStdin();
    let out = "";
    for await (const data of handle.stdout) out += data.toString();
    expect(await handle.wait()).toEqual({ exitCode: 0, signal: null });
    expect(out.trim().split("\n")).toEqual([String(chunk.length + 4), "after-eof"]);
  });

  it("delivers signals, to the process or its group, and reports death by signal", async () => {
    const handle = await client.commands.start([
      "sh",
      "-c",
      "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done",
    ]);
    const iterator = handle.stdout[Symbol.asyncIterator]();
    expect((await iterator.next()).value?.toString()).toBe("ready\n");
    expect(await handle.signal("SIGTERM")).toBe(true);
    let rest = "";
    for (let next = await iterator.next(); !next.done; next = await iterator.next())
      rest += next.value.toString();
    expect(rest).toBe("got-term\n");
    expect(await handle.wait()).toEqual({ exitCode: 42, signal: null });

    const sleeper = await client.commands.start("sleep 100");
    await sleeper.signal("SIGKILL", { group: true });
    expect(await sleeper.wait()).toEqual({ exitCode: null, signal: 9 });
    await expect(sleeper.signal("SIGTERM")).rejects.toMatchObject({ code: "PROCESS_NOT_FOUND" });
  });

  it("times out a command with EXEC_TIMEOUT (killing its whole group) and honours AbortSignal", async () => {
    const error = await client.commands
      .run("echo started; sleep 100 & sleep 100", { timeoutMs: 300 })
      .catch((e) => e);
    expect(error).toBeInstanceOf(AgentError);
    expect(error.code).toBe("EXEC_TIMEOUT");
    expect(error.details.stdout).toBe("started\n");
    expect(error.details.signal).toBe(9);
    const controller = new AbortController();
    const running = client.commands.run("sleep 100", { signal: controller.signal });
    setTimeout(() => controller.abort(), 100);
    await expect(running).rejects.toMatchObject({ code: "ABORTED" });
    const left = await client.commands.list();
    expect(left.filter((p) => p.command.includes("sleep 100") && !p.exited)).toEqual([]);
  });

  it("runs on a pty with a size, resizes it, and closes input with the terminal's EOF", async () => {
    const handle = await client.commands.start(
      ["sh", "-c", "tty; stty size; echo mark-one; read a; stty size; echo mark-two; read b || echo got-eof"],
      { pty: { rows: 30, cols: 100 } },
    );
    let out = "";
    const reading = (async () => {
      for await (const data of handle.stdout) out += data.toString();
    })();
    const until = async (text: string) =>
      settle(
        () => out,
        (o) => o.includes(text),
        10_000,
      );
    await until("mark-one\r\n");
    await handle.resize({ rows: 40, cols: 120 });
    await handle.writeStdin("go\n");
    await until("mark-two\r\n");
    await handle.closeStdin();
    expect(await handle.wait()).toEqual({ exitCode: 0, signal: null });
    await reading;
    expect(out).toMatch(/^\/dev\/pts\/\d+\r\n30 100\r\nmark-one\r\n/);
    expect(out).toContain("go\r\n40 120\r\nmark-two\r\n");
    expect(out).toContain("got-eof");
  });

  it("streams 1 GiB through stdout without the host buffering it (RSS growth bounded)", async () => {
    const total = 1 << 30;
    const handle = await client.commands.start(["head", "-c", String(total), "/dev/zero"], { stdin: false });
    const rssBefore = process.memoryUsage().rss;
    let received = 0;
    let maxRss = rssBefore;
    let chunks = 0;
    for await (const data of handle.stdout) {
      received += data.length;
      if (++chunks % 64 === 0) maxRss = Math.max(maxRss, process.memoryUsage().rss);
    }
    expect(await handle.wait()).toEqual({ exitCode: 0, signal: null });
    expect(received).toBe(total);
    const growthMiB = (maxRss - rssBefore) / (1 << 20);
    console.log(`1 GiB stdout: host RSS growth ${growthMiB.toFixed(1)} MiB`);
    expect(growthMiB).toBeLessThan(128);
  }, 120_000);

  it("keeps stdout and stderr apart and intact when both stream large output at once", async () => {
    const content = randomBytes(12 << 20);
    await client.files.write("/data/random.bin", content);
    const handle = await client.commands.start(
      ["sh", "-c", "cat /data/random.bin >&2 & cat /data/random.bin; wait"],
      {
        stdin: false,
      },
    );
    const read = async (stream: AsyncIterable<Buffer>) => {
      const chunks: Buffer[] = [];
      for await (const chunk of stream) chunks.push(chunk);
      return Buffer.concat(chunks);
    };
    const [out, err] = await Promise.all([read(handle.stdout), read(handle.stderr)]);
    expect(await handle.wait()).toEqual({ exitCode: 0, signal: null });
    expect(out.equals(content)).toBe(true);
    expect(err.equals(content)).toBe(true);
    await client.files.remove("/data/random.bin");
  });

  it("keeps a process that outlives its client; another client lists it and attaches to its output", async () => {
    const first = new AgentClient(agent.unix());
    const handle = await first.commands.start(["sh", "-c", "echo early; read line; echo late-$line; exit 5"]);
    const iterator = handle.stdout[Symbol.asyncIterator]();
    expect((await iterator.next()).value?.toString()).toBe("early\n");
    await first.close();

    await using second = new AgentClient(agent.tcp());
    const listed = await second.commands.list();
    expect(listed).toContainEqual(
      expect.objectContaining({ pid: handle.pid, exited: false, attached: false }),
    );
    const again = await second.commands.connect(handle.pid);
    await again.writeStdin("x\n");
    let out = "";
    for await (const data of again.stdout) out += data.toString();
    expect(out).toBe("late-x\n");
    expect(await again.wait()).toEqual({ exitCode: 5, signal: null });
    await expect(second.commands.connect(handle.pid)).rejects.toMatchObject({ code: "PROCESS_NOT_FOUND" });
  });

  it("moves files: atomic write, read, stat, list, mkdir -p, rename, remove", async () => {
    const files = client.files;
    expect(await files.mkdir("/data/a/b/c")).toBe(3);
    expect(await files.mkdir("/data/a/b/c")).toBe(0);
    const content = Buffer.alloc(5 << 20);
    for (let i = 0; i < content.length; i++) content[i] = (i * 7) & 0xff;
    expect(await files.write("/data/a/b/c/blob.bin", content, { mode: 0o640 })).toBe(content.length);
    expect((await files.read("/data/a/b/c/blob.bin")).equals(content)).toBe(true);
    expect(await files.stat("/data/a/b/c/blob.bin")).toMatchObject({
      type: "file",
      size: content.length,
      mode: 0o640,
      uid: 0,
    });
    // Overwrite in place: readers see the old or the new file, never a part; no temp file is left.
    await files.write("/data/a/b/c/blob.bin", "replaced");
    expect(await files.readText("/data/a/b/c/blob.bin")).toBe("replaced");
    expect((await files.list("/data/a/b/c")).map((e) => e.name)).toEqual(["blob.bin"]);
    async function* generate() {
      for (let i = 0; i < 100; i++) yield Buffer.from(`line ${i}\n`);
    }
    await files.write("/data/streamed.txt", generate());
    expect((await files.readText("/data/streamed.txt")).split("\n")).toHaveLength(101);
    await files.rename("/data/streamed.txt", "/data/a/moved.txt");
    expect(await files.exists("/data/streamed.txt")).toBe(false);
    expect(await files.exists("/data/a/moved.txt")).toBe(true);
    const listing = await files.list("/data/a");
    expect(listing.map((e) => `${e.name}:${e.type}`).sort()).toEqual(["b:dir", "moved.txt:file"]);
    await expect(files.remove("/data/a")).rejects.toMatchObject({ code: "DIRECTORY_NOT_EMPTY" });
    await files.remove("/data/a", { recursive: true });
    expect(await files.exists("/data/a")).toBe(false);
    await expect(files.read("/data/none")).rejects.toMatchObject({ code: "FILE_NOT_FOUND" });
    await expect(files.read("/data")).rejects.toMatchObject({ code: "IS_A_DIRECTORY" });
    await expect(files.list("/etc/passwd")).rejects.toMatchObject({ code: "NOT_A_DIRECTORY" });
    await expect(files.stat("relative/path")).rejects.toMatchObject({ code: "INVALID_OPTIONS" });
  });

  it("streams a large file as the consumer reads it", async () => {
    await client.commands.run("head -c 67108864 /dev/zero > /data/big");
    const stream = await client.files.readStream("/data/big");
    expect(stream.stat.size).toBe(64 << 20);
    let total = 0;
    for await (const chunk of stream) total += chunk.length;
    expect(total).toBe(64 << 20);
    await client.files.remove("/data/big");
  });

  it("does file operations with the caller's user: ownership and permission checks by the kernel", async () => {
    const files = client.files;
    await files.write("/home/sbx/mine.txt", "by sbx", { user: "sbx" });
    expect(await files.stat("/home/sbx/mine.txt")).toMatchObject({ uid: 1000, gid: 1000 });
    await files.write("/data/secret", "root only", { mode: 0o600 });
    await expect(files.read("/data/secret", { user: "sbx" })).rejects.toMatchObject({
      code: "PERMISSION_DENIED",
    });
    await expect(files.write("/root/x", "no", { user: "sbx" })).rejects.toMatchObject({
      code: "PERMISSION_DENIED",
    });
    await expect(files.list("/root", { user: "sbx" })).rejects.toMatchObject({ code: "PERMISSION_DENIED" });
    await expect(files.write("/home/other/x", "no", { user: "sbx" })).rejects.toMatchObject({
      code: "PERMISSION_DENIED",
    });
    await expect(files.remove("/home/sbx/mine.txt", { user: "other" })).rejects.toMatchObject({
      code: "PERMISSION_DENIED",
    });
    // A group the user belongs to through /etc/group grants access.
    await client.commands.run("mkdir /data/shared && chgrp 2000 /data/shared && chmod 770 /data/shared");
    await files.write("/data/shared/ok", "via group", { user: "sbx" });
    expect(await files.readText("/data/shared/ok", { user: "sbx" })).toBe("via group");
    await expect(files.readText("/data/shared/ok", { user: "other" })).rejects.toMatchObject({
      code: "PERMISSION_DENIED",
    });
    // A file owned by another user is read by root like any other.
    expect(await files.readText("/home/sbx/mine.txt")).toBe("by sbx");
    expect((await client.commands.run("ls -a /home/sbx /data")).stdout).not.toContain(".sbx-");
  });

  it("sets the clock, reseeds the RNG and reports health", async () => {
    await client.setClock(new Date());
    await client.reseedRandom();
    await expect(client.reseedRandom(new Uint8Array(4))).rejects.toMatchObject({ code: "INVALID_OPTIONS" });
    const health = await client.health();
    expect(health.version).toBe("0.1.0");
    expect(Math.abs(health.epochMs - Date.now())).toBeLessThan(5_000);
    expect(health.connections).toBeGreaterThanOrEqual(1);
  });

  // The guest's clock is the host's here (CLOCK_REALTIME has no namespace), so the effect cannot be
  // observed without moving the host's clock: strace shows the agent making the calls, with the
  // host's values, which a no-op or a wrong conversion would not.
  it.skipIf(noStrace !== "")(
    `after a restore, sets the clock to the host's time and credits and reseeds the RNG, as strace sees${noStrace ? ` (skipped: ${noStrace})` : ""}`,
    async () => {
      const agentPid = descendantNamed(agent.pid, "agent");
      const log = join(agent.root, "..", "strace.log");
      const strace = spawn("strace", ["-e", "trace=clock_settime,ioctl", "-o", log, "-p", String(agentPid)], {
        stdio: ["ignore", "ignore", "pipe"],
      });
      let attached = "";
      strace.stderr?.on("data", (chunk: Buffer) => {
        attached += chunk.toString();
      });
      await settle(
        () => attached,
        (text) => text.includes("attached"),
        10_000,
      );
      const when = new Date();
      await client.setClock(when);
      await client.reseedRandom(new Uint8Array(64).fill(7));
      const exited = new Promise((resolve) => strace.once("exit", resolve));
      strace.kill("SIGINT");
      await exited;
      const calls = readFileSync(log, "utf8");
      const seconds = Math.floor(when.getTime() / 1000);
      const nanos = (when.getTime() % 1000) * 1_000_000;
      expect(calls).toContain(`clock_settime(CLOCK_REALTIME, {tv_sec=${seconds}, tv_nsec=${nanos}}) = 0`);
      expect(calls).toMatch(
        /ioctl\(\d+, RNDADDENTROPY, \{entropy_count=512, buf_size=64, buf="(\\7)+"\.*\}\)\s*= 0/,
      );
      expect(calls).toMatch(/ioctl\(\d+, RNDRESEEDCRNG\)\s*= 0/);
    },
  );

  it("works over the Unix socket and through a hybrid-vsock CONNECT proxy, and reconnects after a reset", async () => {
    await using viaUnix = new AgentClient(agent.unix());
    expect((await viaUnix.commands.run("echo unix")).stdout).toBe("unix\n");

    await using proxy = await startHybridVsockProxy({
      path: join(agent.root, "..", "v.sock"),
      ports: { 1024: agent.unixPath },
    });
    await using vsock = new AgentClient(firecrackerVsockTransport({ udsPath: proxy.path, port: 1024 }), {
      connectTimeoutMs: 3000,
    });
    expect((await vsock.commands.run("echo vsock")).stdout).toBe("vsock\n");

    // A restore resets every vsock connection: the running process is attached again and loses nothing.
    const handle = await vsock.commands.start(["sh", "-c", "read a; echo got-$a; read b; echo got-$b"]);
    let out = "";
    const reading = (async () => {
      for await (const data of handle.stdout) out += data.toString();
    })();
    await handle.writeStdin("one\n");
    await settle(
      () => out,
      (o) => o.includes("got-one"),
    );
    proxy.resetAll();
    // list() is safe to repeat, so it is retried on a new connection; the handle attaches again meanwhile.
    await settle(
      async () => (await vsock.commands.list()).find((p) => p.pid === handle.pid)?.attached,
      (a) => a === true,
    );
    expect((await vsock.commands.run("echo after-reset")).stdout).toBe("after-reset\n");
    await handle.writeStdin("two\n");
    expect(await handle.wait()).toEqual({ exitCode: 0, signal: null });
    await reading;
    expect(out).toBe("got-one\ngot-two\n");

    // What the orchestrator does after every resume: drop the (possibly dead) connection, then clock and RNG.
    proxy.resetAll();
    await vsock.afterRestore();
    expect((await vsock.commands.run("echo restored")).stdout).toBe("restored\n");

    const wrongPort = new AgentClient(firecrackerVsockTransport({ udsPath: proxy.path, port: 9 }), {
      connectTimeoutMs: 300,
    });
    await expect(wrongPort.health()).rejects.toMatchObject({ code: "AGENT_UNREACHABLE" });
  });

  it("restarts the agent when it dies (the init's loop) and the client reconnects transparently", async () => {
    const before = await client.hello();
    await client.commands.run(`kill ${before.pid}`).catch(() => undefined);
    const health = await client.health();
    expect(health.uptimeMs).toBeLessThan(10_000);
    expect((await client.hello()).pid).not.toBe(before.pid);
    expect(agent.log()).toMatch(/agent exited with/);
  });
});
