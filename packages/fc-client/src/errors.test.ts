import { SbxError } from "@sbx/arch";
import { describe, expect, it } from "vitest";
import {
  FirecrackerApiError,
  FirecrackerError,
  FirecrackerLaunchError,
  FirecrackerVersionError,
} from "./errors.ts";

type ErrorsModule = typeof import("./errors.ts");

function oneOfEach(m: ErrorsModule) {
  return {
    base: new m.FirecrackerError("TIMEOUT", "timed out"),
    api: new m.FirecrackerApiError({
      status: 400,
      method: "PUT",
      path: "/drives/rootfs",
      faultMessage: "bad",
    }),
    version: new m.FirecrackerVersionError({
      operation: "putPmem",
      version: "1.12.0",
      minimumVersion: "1.14",
    }),
    launch: new m.FirecrackerLaunchError("SPAWN_FAILED", "no binary", {
      exitCode: 1,
      details: { bin: "/x" },
    }),
  };
}

describe("fc-client errors", () => {
  it("each class's isInstance takes its own errors from a second copy of the module, the base takes all", async () => {
    const specifier = "./errors.ts?second-copy";
    const copy = oneOfEach((await import(specifier)) as ErrorsModule);
    expect(copy.api instanceof FirecrackerError).toBe(false);
    const checks: Record<string, (value: unknown) => boolean> = {
      api: (value) => FirecrackerApiError.isInstance(value),
      version: (value) => FirecrackerVersionError.isInstance(value),
      launch: (value) => FirecrackerLaunchError.isInstance(value),
    };
    for (const [kind, isInstance] of Object.entries(checks))
      for (const [other, error] of Object.entries(copy)) expect(isInstance(error)).toBe(kind === other);
    for (const error of Object.values(copy)) {
      expect(FirecrackerError.isInstance(error)).toBe(true);
      expect(SbxError.isInstance(error)).toBe(true);
    }
  });

  it("carries details and keeps one code list for client and launcher", () => {
    const { api, version, launch } = oneOfEach({
      FirecrackerError,
      FirecrackerApiError,
      FirecrackerVersionError,
      FirecrackerLaunchError,
    } as ErrorsModule);
    expect(api).toMatchObject({
      code: "API_ERROR",
      details: { status: 400, method: "PUT", path: "/drives/rootfs" },
    });
    expect(version).toMatchObject({ code: "VERSION_UNSUPPORTED", details: { operation: "putPmem" } });
    expect(launch).toMatchObject({ code: "SPAWN_FAILED", exitCode: 1, signal: null, details: { bin: "/x" } });
  });
});
