// `sbx doctor` reports the jailer and Firecracker it would use as a pair: a jailer from an older release
// launches a newer Firecracker (the jailer only execs it), so the two versions may differ.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { FirecrackerLaunchError } from "./errors.ts";

const run = promisify(execFile);

/** The versions a jailer and a Firecracker binary report, which must match. */
export interface JailerAndFirecrackerVersions {
  /** `X.Y.Z` from `jailer --version` ("Jailer vX.Y.Z"). */
  jailer: string;
  /** `X.Y.Z` from `firecracker --version` ("Firecracker vX.Y.Z"). */
  firecracker: string;
}

/** The jailer's and Firecracker's versions (`--version`), for `sbx doctor`. */
export async function readJailerAndFirecrackerVersions(binaries: {
  jailer: string;
  firecracker: string;
}): Promise<JailerAndFirecrackerVersions> {
  const version = async (binary: string, name: string): Promise<string> => {
    let stdout: string;
    try {
      ({ stdout } = await run(binary, ["--version"], { timeout: 10_000 }));
    } catch (cause) {
      throw new FirecrackerLaunchError(
        "BINARY_NOT_FOUND",
        `cannot run ${binary} --version: ${(cause as Error).message}`,
        {
          cause,
          details: { binary },
        },
      );
    }
    // The version is the whole match (the name is a lookbehind), so no capture group can be missing.
    const found = new RegExp(`(?<=^${name} v)\\d+\\.\\d+\\.\\d+\\S*`, "m").exec(stdout)?.[0];
    if (found === undefined) {
      throw new FirecrackerLaunchError(
        "BINARY_NOT_FOUND",
        `${binary} --version did not print "${name} vX.Y.Z" (got ${JSON.stringify(stdout.slice(0, 200))})`,
        { details: { binary } },
      );
    }
    return found;
  };
  return {
    jailer: await version(binaries.jailer, "Jailer"),
    firecracker: await version(binaries.firecracker, "Firecracker"),
  };
}
