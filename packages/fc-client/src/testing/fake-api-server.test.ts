import { existsSync } from "node:fs";
import { dirname } from "node:path";
import { describe, expect, it } from "vitest";
import { createFirecrackerClient } from "../client.ts";
import { FirecrackerApiError } from "../errors.ts";
import { fdCount, settle } from "../test-process-counts.ts";
import { startFakeFirecrackerApi } from "./fake-api-server.ts";

const faultOf = (promise: Promise<unknown>) =>
  promise.then(
    () => "no error",
    (e: unknown) => (e instanceof FirecrackerApiError ? e.faultMessage : String(e)),
  );

describe("the fake Firecracker API", () => {
  it("keeps Firecracker's state machine: pre-boot, running, paused, snapshot load", async () => {
    await using api = await startFakeFirecrackerApi();
    await using client = createFirecrackerClient({ socketPath: api.socketPath, arch: "amd64" });
    expect(await faultOf(client.patchVm({ state: "Paused" }))).toMatch(/not supported before starting/);
    await client.putGuestBootSource({ kernel_image_path: "/k" });
    expect(await faultOf(client.loadSnapshot({ snapshot_path: "/s" }))).toMatch(
      /after configuring boot-specific/,
    );
    await client.createSyncAction({ action_type: "InstanceStart" });
    expect(api.state).toBe("Running");
    expect(await faultOf(client.createSnapshot({ mem_file_path: "/m", snapshot_path: "/s" }))).toMatch(
      /not paused/,
    );
    await client.patchVm({ state: "Paused" });
    expect(api.state).toBe("Paused");
    await client.patchVm({ state: "Resumed" });
    expect(api.state).toBe("Running");
  });

  it("loads a snapshot into a fresh instance, paused or resumed", async () => {
    await using api = await startFakeFirecrackerApi();
    await using client = createFirecrackerClient({ socketPath: api.socketPath, arch: "amd64" });
    await client.loadSnapshot({
      snapshot_path: "/s",
      mem_backend: { backend_type: "Uffd", backend_path: "/u" },
      resume_vm: true,
    });
    expect((await client.describeInstance()).state).toBe("Running");
  });

  it("behaves as the version it is given, and checks path ids against bodies", async () => {
    await using api = await startFakeFirecrackerApi({ version: "1.12.1" });
    await using client = createFirecrackerClient({ socketPath: api.socketPath, arch: "amd64" });
    expect(await faultOf(client.request("PUT", "/serial", { serial_out_path: "/o" }))).toBe(
      "Invalid request method and/or path: PUT serial.",
    );
    expect(
      await faultOf(client.request("PUT", "/drives/a", { drive_id: "b", is_root_device: true })),
    ).toMatch(/id from the path does not match/);
    expect(await faultOf(client.request("PUT", "/machine-config", undefined))).toMatch(
      /body of the request is empty/,
    );
    expect(api.requests.map((r) => r.status)).toEqual([400, 400, 400]);
  });

  it("removes its socket and leaks no fd when disposed", async () => {
    const before = fdCount();
    let socketPath: string;
    {
      await using api = await startFakeFirecrackerApi();
      socketPath = api.socketPath;
      await using client = createFirecrackerClient({ socketPath, arch: "amd64" });
      await client.describeInstance();
      expect(existsSync(socketPath)).toBe(true);
    }
    expect(existsSync(dirname(socketPath))).toBe(false);
    await settle(20);
    expect(fdCount()).toBeLessThanOrEqual(before);
  });
});
