import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createFirecrackerClient } from "./client.ts";
import { FirecrackerApiError } from "./errors.ts";
import { type FirecrackerProcess, launchFirecracker } from "./launcher.ts";
import { rejection } from "./test-errors.ts";
import { childPids, fdCount, settle } from "./test-process-counts.ts";
import { realFirecracker } from "./testing/real-firecracker.ts";
import { parseFirecrackerVersion } from "./versions.ts";

const { binary: firecrackerBin, skipReason: firecrackerSkip } = realFirecracker();
const skipReason = firecrackerSkip;
if (skipReason) console.log(`[fc-client] real-Firecracker API tests skipped: ${skipReason}`);

describe.skipIf(skipReason !== undefined)(
  `the client against a real Firecracker${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let fc: FirecrackerProcess;
    let before: { fds: number; children: number[] };
    beforeAll(async () => {
      before = { fds: fdCount(), children: childPids() };
      fc = await launchFirecracker({ binary: firecrackerBin!, id: "sbx-real-api" });
    });
    afterAll(async () => {
      await fc?.kill({ graceMs: 1000 });
      await fc?.[Symbol.asyncDispose]();
      await settle(100);
      expect(childPids()).toEqual(before.children);
      expect(fdCount()).toBe(before.fds);
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

    it("refuses by version exactly what this Firecracker lacks", async () => {
      await using client = createFirecrackerClient({ socketPath: fc.client.socketPath });
      const version = parseFirecrackerVersion(await client.version())!;
      const body = { snapshot_path: "/nonexistent", mem_file_path: "/nonexistent", clock_realtime: false };
      const remote = await rejection(client.request("PUT", "/snapshot/load", body));
      if (version.major === 1 && version.minor < 16) {
        expect((await rejection(client.loadSnapshot(body))).code).toBe("VERSION_UNSUPPORTED");
        expect((remote as FirecrackerApiError).faultMessage).toMatch(/unknown field `clock_realtime`/);
      } else {
        expect((remote as FirecrackerApiError).faultMessage).not.toMatch(/unknown field/);
      }
      // A 1.14 feature this binary has: the client lets it through and Firecracker accepts it.
      if (version.major > 1 || version.minor >= 14)
        await client.putSerialDevice({ serial_out_path: "/dev/null" });
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
