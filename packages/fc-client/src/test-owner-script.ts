// A stand-in owner for the owner-death tests: launches the tiny test guest in N Firecrackers (jailed
// when asked), prints their pids once every guest is up, then idles until it is killed.
import { join } from "node:path";
import type { JailLaunchOptions } from "./jail.ts";
import { type FirecrackerProcess, launchFirecracker } from "./launcher.ts";
import { TEST_GUEST_READY_MARKER } from "./testing/tiny-guest.ts";

interface OwnerSpec {
  binary: string;
  guestPath: string;
  ids: string[];
  /** Firecracker's log goes here: on stdout it would split the guest's marker line. */
  logDir: string;
  jail?: JailLaunchOptions;
  dieWithOwner?: boolean;
}

const spec = JSON.parse(process.argv[2]!) as OwnerSpec;
const handles: FirecrackerProcess[] = [];
for (const id of spec.ids) {
  handles.push(
    await launchFirecracker({
      binary: spec.binary,
      id,
      logPath: join(spec.logDir, `${id}.log`),
      dieWithOwner: spec.dieWithOwner,
      configFile: {
        "boot-source": {
          kernel_image_path: spec.jail ? "/kernel" : spec.guestPath,
          boot_args: "console=ttyS0",
        },
        "machine-config": { vcpu_count: 1, mem_size_mib: 128 },
        drives: [],
      },
      jail: spec.jail ? { ...spec.jail, files: { kernel: spec.guestPath } } : undefined,
    }),
  );
}
for (const handle of handles) await handle.waitForConsole(TEST_GUEST_READY_MARKER, { timeoutMs: 20_000 });
process.stdout.write(`READY ${handles.map((h) => h.pid).join(",")}\n`);
setInterval(() => {}, 1 << 30);
