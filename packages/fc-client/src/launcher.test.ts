import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { FirecrackerLaunchError } from "./errors.ts";
import { launchFirecracker } from "./launcher.ts";
import { childPids, fdCount, launcherTempDirs, processState, settledFdCount } from "./test-process-counts.ts";
import { fakeFirecrackerCommand } from "./testing/fake-firecracker-command.ts";

async function expectLaunchError(promise: Promise<unknown>): Promise<FirecrackerLaunchError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(FirecrackerLaunchError);
  return error as FirecrackerLaunchError;
}

describe("launchFirecracker with the fake firecracker executable", () => {
  let dir: string;
  let before: { fds: number; children: number[]; temps: string[] };

  // Per test: a test that fails or is interrupted leaves nothing for the next one, and a leak is
  // reported by the test that caused it.
  beforeEach(async () => {
    before = { fds: fdCount(), children: childPids(), temps: launcherTempDirs("lt-") };
    dir = await mkdtemp(join(tmpdir(), "sbx-launcher-test-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
    // Every process was reaped, every fd closed, every temp dir removed.
    await vi.waitFor(() => expect(childPids()).toEqual(before.children), { timeout: 10_000 });
    expect(await settledFdCount(before.fds)).toBe(before.fds);
    expect(launcherTempDirs("lt-")).toEqual(before.temps);
  });

  it("fails with the exit status and the last output lines when the process dies before ready", async () => {
    const error = await expectLaunchError(
      launchFirecracker({
        ...fakeFirecrackerCommand({
          crashBeforeReady: {
            exitCode: 3,
            output: ["guest kernel not found"],
            stderr: ["Error: bad config"],
          },
        }),
        id: "lt-crash",
      }),
    );
    expect(error.code).toBe("EXITED_BEFORE_READY");
    expect(error.exitCode).toBe(3);
    expect(error.signal).toBeNull();
    expect(error.output).toContain("guest kernel not found");
    expect(error.output).toContain("stderr: Error: bad config");
    expect(error.message).toMatch(/exited with status 3 before its API socket/);
    await vi.waitFor(() => expect(childPids()).toEqual(before.children));
  });

  it("waits for a slow start until the socket answers, then kills with SIGTERM and cleans up", async () => {
    const fc = await launchFirecracker({ ...fakeFirecrackerCommand({ startDelayMs: 400 }), id: "lt-slow" });
    expect(fc.pid).toBeGreaterThan(0);
    expect(childPids()).toContain(fc.pid);
    expect(existsSync(fc.socketPath)).toBe(true);
    const info = await fc.client.describeInstance();
    expect(info.id).toBe("lt-slow");
    expect(info.state).toBe("Not started");
    // Not running: no SendCtrlAltDel, SIGTERM at once.
    const status = await fc.kill({ graceMs: 5000 });
    expect(status).toEqual({ exitCode: 143, signal: null });
    expect(existsSync(fc.socketPath)).toBe(false);
    expect(await fc.kill()).toBe(status);
    expect(childPids()).not.toContain(fc.pid);
  });

  it("sends SIGKILL once graceMs has passed after an ignored SIGTERM, not before", async () => {
    const fc = await launchFirecracker({
      ...fakeFirecrackerCommand({ ignoreSigterm: true }),
      id: "lt-stubborn",
    });
    // The grace period runs on fake timers: the test moves time itself instead of measuring it.
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    try {
      let settled = false;
      const killed = fc.kill({ graceMs: 10_000, discard: true }).finally(() => {
        settled = true;
      });
      await fc.waitForConsole("ignoring SIGTERM", { timeoutMs: 60_000 }); // SIGTERM first, and ignored
      await vi.advanceTimersByTimeAsync(9_999);
      expect(settled).toBe(false);
      expect(processState(fc.pid)).not.toBe("Z"); // still running: no SIGKILL yet
      await vi.advanceTimersByTimeAsync(1);
      vi.useRealTimers();
      expect((await killed).signal).toBe("SIGKILL");
    } finally {
      vi.useRealTimers();
    }
    expect(childPids()).not.toContain(fc.pid);
  });

  it("uses SendCtrlAltDel for a running VM on x86_64 and falls back to SIGKILL when the guest ignores it", async () => {
    const polite = await launchFirecracker({
      ...fakeFirecrackerCommand({ exitOnCtrlAltDel: true, ignoreSigterm: true }),
      id: "lt-cad",
      arch: "amd64",
    });
    await polite.client.createSyncAction({ action_type: "InstanceStart" });
    expect(await polite.kill({ graceMs: 5000 })).toEqual({ exitCode: 0, signal: null });
    expect(polite.console.lines().some((line) => line.includes("Ctrl-Alt-Del"))).toBe(true);

    const ignored = await launchFirecracker({
      ...fakeFirecrackerCommand({ ignoreSigterm: true }),
      id: "lt-cad2",
      arch: "amd64",
    });
    await ignored.client.createSyncAction({ action_type: "InstanceStart" });
    expect((await ignored.kill({ graceMs: 200 })).signal).toBe("SIGKILL");
  });

  it("captures the console line by line: waitForConsole and async iteration", async () => {
    await using fc = await launchFirecracker({
      ...fakeFirecrackerCommand({
        consoleLines: ["booting", "SBX-GUEST-READY", "tick 1", "tick 2"],
        consoleIntervalMs: 20,
      }),
      id: "lt-console",
    });
    const since = fc.console.position;
    await fc.client.createSyncAction({ action_type: "InstanceStart" });
    const ready = await fc.waitForConsole("SBX-GUEST-READY", { timeoutMs: 5000, since });
    expect(ready.line.text).toBe("SBX-GUEST-READY");
    const tick = await fc.waitForConsole(/tick (\d)/, { timeoutMs: 5000, since: ready.line.seq + 1 });
    expect(tick.match[1]).toBe("1");
    await fc.waitForConsole("tick 2", { timeoutMs: 5000 });
    // stdin is an open pipe into the serial console.
    fc.stdin.write("hello guest\n");
    await fc.waitForConsole("serial-in: hello guest", { timeoutMs: 5000 });
    const seen: string[] = [];
    const iterate = (async () => {
      for await (const line of fc.console) seen.push(line);
    })();
    await fc.kill({ discard: true });
    await iterate;
    expect(seen.filter((line) => !line.includes("[lt-console:main]"))).toEqual([
      "booting",
      "SBX-GUEST-READY",
      "tick 1",
      "tick 2",
      "serial-in: hello guest",
    ]);
    const closed = await expectLaunchError(
      fc.waitForConsole("never", { timeoutMs: 1000, since: fc.console.position }),
    );
    expect(closed.code).toBe("CONSOLE_CLOSED");
  });

  it("times out when the socket never answers, and honours an abort signal", async () => {
    const timeout = await expectLaunchError(
      launchFirecracker({
        ...fakeFirecrackerCommand({ startDelayMs: 30_000 }),
        id: "lt-never",
        readyTimeoutMs: 300,
      }),
    );
    expect(timeout.code).toBe("READY_TIMEOUT");
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error("test abort")), 200);
    const aborted = await expectLaunchError(
      launchFirecracker({
        ...fakeFirecrackerCommand({ startDelayMs: 30_000 }),
        id: "lt-aborted",
        signal: controller.signal,
      }),
    );
    expect(aborted.code).toBe("ABORTED");
    await vi.waitFor(() => expect(childPids()).toEqual(before.children));
  });

  it("aborting the signal after launch discards the VM", async () => {
    const controller = new AbortController();
    const fc = await launchFirecracker({
      ...fakeFirecrackerCommand(),
      id: "lt-abort-later",
      signal: controller.signal,
    });
    controller.abort();
    expect(await fc.exited).toEqual({ exitCode: 143, signal: null });
    await fc.kill();
    expect(existsSync(fc.socketPath)).toBe(false);
  });

  it("cleans up when Firecracker exits on its own", async () => {
    const socketPath = join(dir, "own.sock");
    const fc = await launchFirecracker({
      ...fakeFirecrackerCommand({ exitAfterMs: 100 }),
      id: "lt-own-exit",
      socketPath,
    });
    expect(fc.socketPath).toBe(socketPath);
    expect(await fc.exited).toEqual({ exitCode: 1, signal: null });
    await fc.kill();
    expect(existsSync(socketPath)).toBe(false);
  });

  it("checks the binary and the options before spawning", async () => {
    const missing = await expectLaunchError(launchFirecracker({ binary: join(dir, "nope"), id: "lt-x" }));
    expect(missing.code).toBe("BINARY_NOT_FOUND");
    const script = join(dir, "firecracker");
    await writeFile(script, "#!/bin/sh\nexit 0\n", { mode: 0o755 });
    const notElf = await expectLaunchError(launchFirecracker({ binary: script, id: "lt-x" }));
    expect(notElf.code).toBe("BINARY_ARCH_MISMATCH");
    const otherArch = process.arch === "arm64" ? "amd64" : "arm64";
    const wrongArch = await expectLaunchError(
      launchFirecracker({ ...fakeFirecrackerCommand(), id: "lt-x", arch: otherArch }),
    );
    expect(wrongArch.code).toBe("BINARY_ARCH_MISMATCH");
    expect(wrongArch.message).toMatch(/target arch is/);
    const badId = await expectLaunchError(launchFirecracker({ ...fakeFirecrackerCommand(), id: "bad id" }));
    expect(badId.code).toBe("INVALID_OPTIONS");
    const taken = join(dir, "taken.sock");
    await writeFile(taken, "");
    const exists = await expectLaunchError(
      launchFirecracker({ ...fakeFirecrackerCommand(), id: "lt-x", socketPath: taken }),
    );
    expect(exists.code).toBe("INVALID_OPTIONS");
    expect(exists.message).toMatch(/already exists/);
  });

  it("adds the arch's Firecracker arguments and the log/metrics paths", async () => {
    const logPath = join(dir, "fc.log");
    const metricsPath = join(dir, "metrics.ndjson");
    await using fc = await launchFirecracker({
      ...fakeFirecrackerCommand(),
      id: "lt-args",
      arch: process.arch === "arm64" ? "arm64" : "amd64",
      seccompFilter: "/etc/sbx/filter.bpf",
      logPath,
      metricsPath,
      args: ["--level", "Debug"],
    });
    const argvLine = fc.console.lines().find((line) => line.includes("argv ["))!;
    const argv = JSON.parse(argvLine.slice(argvLine.indexOf("argv ") + 5)) as string[];
    expect(argv).toEqual([
      "--api-sock",
      fc.socketPath,
      "--id",
      "lt-args",
      "--seccomp-filter",
      "/etc/sbx/filter.bpf",
      "--log-path",
      logPath,
      "--metrics-path",
      metricsPath,
      "--level",
      "Debug",
    ]);
    expect(existsSync(logPath) && existsSync(metricsPath)).toBe(true);
  });

  it("refuses an arm64 UFFD restore without a seccomp choice, and reports an unrunnable binary", async () => {
    // A 64-bit little-endian ELF header for EM_AARCH64, nothing else.
    const header = Buffer.alloc(64);
    header.writeUInt32BE(0x7f454c46, 0);
    header[4] = 2;
    header[5] = 1;
    header[6] = 1;
    header.writeUInt16LE(2, 16);
    header.writeUInt16LE(183, 18);
    const arm64Binary = join(dir, "firecracker-aarch64");
    await writeFile(arm64Binary, header, { mode: 0o755 });
    const seccomp = await expectLaunchError(
      launchFirecracker({ binary: arm64Binary, id: "lt-arm", arch: "arm64", uffdRestore: true }),
    );
    expect(seccomp.code).toBe("INVALID_OPTIONS");
    expect(seccomp.message).toMatch(/seccomp/);
    if (process.arch !== "arm64") {
      const spawnFailed = await expectLaunchError(
        launchFirecracker({
          binary: arm64Binary,
          id: "lt-arm",
          arch: "arm64",
          uffdRestore: true,
          allowNoSeccomp: true,
        }),
      );
      expect(["SPAWN_FAILED", "EXITED_BEFORE_READY"]).toContain(spawnFailed.code);
    }
  });

  it("config-file mode: validates the config, passes --config-file and removes the temp file", async () => {
    const invalid = await expectLaunchError(
      launchFirecracker({
        ...fakeFirecrackerCommand(),
        id: "lt-cfg",
        configFile: { "boot-source": { kernel_image_path: "/k", boot_argz: "typo" } } as never,
      }),
    );
    expect(invalid.code).toBe("CONFIG_INVALID");
    expect(invalid.message).toMatch(/boot-source/);
    const badFile = join(dir, "bad.json");
    await writeFile(badFile, "{");
    expect(
      (
        await expectLaunchError(
          launchFirecracker({ ...fakeFirecrackerCommand(), id: "lt-cfg", configFile: badFile }),
        )
      ).code,
    ).toBe("CONFIG_INVALID");

    const fc = await launchFirecracker({
      ...fakeFirecrackerCommand({ consoleLines: ["SBX-GUEST-READY"] }),
      id: "lt-cfg",
      configFile: {
        "boot-source": { kernel_image_path: "/guest.elf", boot_args: "console=ttyS0" },
        "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
        drives: [],
      },
    });
    await fc.waitForConsole("SBX-GUEST-READY", { timeoutMs: 5000 });
    expect((await fc.client.describeInstance()).state).toBe("Running");
    await fc.kill({ discard: true });
  });
});
