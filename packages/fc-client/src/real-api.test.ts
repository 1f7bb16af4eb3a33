import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createFirecrackerClient } from "./client.ts";
import { FirecrackerApiError } from "./errors.ts";
import { type FirecrackerProcess, launchFirecracker } from "./launcher.ts";
import { rejection } from "./test-errors.ts";
import { childPids, fdCount, settledFdCount } from "./test-process-counts.ts";
import { realFirecracker } from "./testing/real-firecracker.ts";
import { FIELD_SINCE, OPERATION_SINCE, parseFirecrackerVersion, versionAtLeast } from "./versions.ts";

const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker();
const skipReason = firecrackerSkip;
if (skipReason) console.log(`[fc-client] real-Firecracker API tests skipped: ${skipReason}`);

describe.skipIf(skipReason !== undefined)(
  `the client against a real Firecracker${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let fc: FirecrackerProcess;
    let before: { fds: number; children: number[] };
    // A Firecracker per test, disposed by the test's own hook: a failed test leaves no process behind
    // for the next one, and a leak is reported by the test that caused it.
    beforeEach(async () => {
      before = { fds: fdCount(), children: childPids() };
      fc = await launchFirecracker({ binary: firecrackerBin!, id: "sbx-real-api" });
    });
    afterEach(async () => {
      await fc?.kill({ graceMs: 1000 });
      await fc?.[Symbol.asyncDispose]();
      await vi.waitFor(() => expect(childPids()).toEqual(before.children));
      expect(await settledFdCount(before.fds)).toBe(before.fds);
    });

    it("reads the version and the instance", async () => {
      await using client = createFirecrackerClient({ socketPath: fc.client.socketPath });
      const { firecracker_version } = await client.getFirecrackerVersion();
      expect(parseFirecrackerVersion(firecracker_version)).toBeDefined();
      expect(await client.version()).toBe(firecracker_version);
      expect(await client.describeInstance()).toMatchObject({
        app_name: "Firecracker",
        state: "Not started",
      });
      expect((await client.getMachineConfiguration()).vcpu_count).toBeGreaterThan(0);
    });

    it("refuses a typo locally, and Firecracker itself refuses the same typo", async () => {
      await using client = createFirecrackerClient({ socketPath: fc.client.socketPath });
      const body = { vcpu_count: 1, mem_size_mib: 128, vcpu_countt: 1 };
      const local = await rejection(client.putMachineConfiguration(body as never));
      expect(local.code).toBe("INVALID_REQUEST");
      const remote = await rejection(client.request("PUT", "/machine-config", body));
      expect(remote).toBeInstanceOf(FirecrackerApiError);
      expect((remote as FirecrackerApiError).faultMessage).toMatch(/unknown field `vcpu_countt`/);
    });

    it("refuses by version exactly what this Firecracker lacks, and lets through what it has", async () => {
      await using client = createFirecrackerClient({ socketPath: fc.client.socketPath });
      const version = parseFirecrackerVersion(await client.version())!;
      // This Firecracker's raw answers say what it has; the client's version table must agree, both ways.
      const body = { snapshot_path: "/nonexistent", mem_file_path: "/nonexistent", clock_realtime: false };
      const remote = await rejection(client.request("PUT", "/snapshot/load", body));
      expect(remote).toBeInstanceOf(FirecrackerApiError);
      const hasClockRealtime = !/unknown field `clock_realtime`/.test(
        (remote as FirecrackerApiError).faultMessage ?? "",
      );
      expect(versionAtLeast(version, FIELD_SINCE.SnapshotLoadParams!.clock_realtime!)).toBe(hasClockRealtime);
      const local = await rejection(client.loadSnapshot(body));
      if (hasClockRealtime) {
        expect(local).toBeInstanceOf(FirecrackerApiError); // sent, and refused for the missing files
        expect((local as FirecrackerApiError).faultMessage).toBe(
          (remote as FirecrackerApiError).faultMessage,
        );
      } else {
        expect(local.code).toBe("VERSION_UNSUPPORTED");
      }
      const serial = { serial_out_path: "/dev/null" };
      const hasSerial = await client.request("PUT", "/serial", serial).then(
        () => true,
        () => false,
      );
      expect(versionAtLeast(version, OPERATION_SINCE.putSerialDevice!)).toBe(hasSerial);
      if (hasSerial) await expect(client.putSerialDevice(serial)).resolves.toBeUndefined();
      else expect((await rejection(client.putSerialDevice(serial))).code).toBe("VERSION_UNSUPPORTED");
    });

    it("applies a machine config and reads it back through GET /vm/config", async () => {
      await using client = createFirecrackerClient({ socketPath: fc.client.socketPath });
      await client.putMachineConfiguration({
        vcpu_count: 2,
        mem_size_mib: 256,
        smt: false,
        track_dirty_pages: true,
      });
      const exported = await client.getExportVmConfig();
      expect(exported["machine-config"]).toMatchObject({
        vcpu_count: 2,
        mem_size_mib: 256,
        track_dirty_pages: true,
      });
    });
  },
);
