import { spawn } from "node:child_process";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

/**
 * Runs the injected guest scripts on the host under the real Debian busybox `sh`, chroot-free:
 * SBX_ROOT points at the image directory, SBX_CMDLINE_FILE at a fake /proc/cmdline, and SBX_BB at
 * a stub "busybox" that logs every privileged applet call (mount, ip, date -s, hostname, reboot)
 * instead of running it, and runs file applets (mv, rm, mkdir, sh) for real.
 */
export interface GuestHarness {
  root: string;
  log: string;
  stub: string;
  run(script: string, options: GuestRunOptions): Promise<GuestRunResult>;
  calls(): Promise<string[]>;
  dispose(): Promise<void>;
}

export interface GuestRunOptions {
  cmdline: string;
  /** What `ip -4 addr show dev X` prints (the kernel's IP_PNP result). */
  ipAddrOutput?: string;
  /** What `date +%s` prints. */
  now?: number;
  /** Applets `busybox --list` prints. */
  applets?: string[];
  /** Run a function of /.sbx/lib.sh instead of a script file: `sh -c '. lib.sh; <shellCode>'`. */
  shellCode?: string;
}

export interface GuestRunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

const STUB = `#!/bin/sh
echo "$*" >> "$STUB_LOG"
case "$1" in
  ip)
    if [ "$2" = -4 ] && [ "$3" = addr ]; then printf '%s' "$STUB_IP_ADDR"; fi
    exit 0 ;;
  date) if [ "$2" = +%s ]; then echo "$STUB_NOW"; fi; exit 0 ;;
  --list) printf '%s\\n' $STUB_APPLETS; exit 0 ;;
  sh) shift; exec /bin/busybox sh "$@" ;;
  mv|rm|mkdir|cat) exec /bin/busybox "$@" ;;
  *) exit 0 ;;
esac
`;

export async function createGuestHarness(root?: string): Promise<GuestHarness> {
  const base = await mkdtemp(join(tmpdir(), "sbx-guest-harness-"));
  const imageRoot = root ?? join(base, "root");
  await mkdir(imageRoot, { recursive: true });
  const stub = join(base, "busybox-stub");
  const log = join(base, "calls.log");
  await writeFile(stub, STUB);
  await chmod(stub, 0o755);
  await writeFile(log, "");
  const cmdlineFile = join(base, "cmdline");
  return {
    root: imageRoot,
    log,
    stub,
    async run(script, options) {
      await writeFile(cmdlineFile, `${options.cmdline}\n`);
      const args =
        options.shellCode !== undefined
          ? ["sh", "-c", `. "$SBX_ROOT/.sbx/lib.sh"; ${options.shellCode}`]
          : ["sh", join(imageRoot, script)];
      return await new Promise<GuestRunResult>((resolve, reject) => {
        const child = spawn("/bin/busybox", args, {
          env: {
            PATH: "/usr/bin:/bin",
            SBX_ROOT: imageRoot,
            SBX_BB: stub,
            SBX_CMDLINE_FILE: cmdlineFile,
            STUB_LOG: log,
            STUB_IP_ADDR: options.ipAddrOutput ?? "",
            STUB_NOW: String(options.now ?? 0),
            STUB_APPLETS: (options.applets ?? ["sh", "ip", "mount"]).join(" "),
          },
          stdio: ["ignore", "pipe", "pipe"],
        });
        let stdout = "";
        let stderr = "";
        child.stdout.on("data", (c: Buffer) => {
          stdout += c.toString();
        });
        child.stderr.on("data", (c: Buffer) => {
          stderr += c.toString();
        });
        const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
        child.on("error", reject);
        child.on("close", (code) => {
          clearTimeout(timer);
          resolve({ code, stdout, stderr });
        });
      });
    },
    async calls() {
      return (await readFile(log, "utf8")).split("\n").filter((l) => l !== "");
    },
    async dispose() {
      await rm(base, { recursive: true, force: true });
    },
  };
}
