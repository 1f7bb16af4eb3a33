/**
 * A fake `firecracker` executable for launcher tests: `node fake-firecracker.js --api-sock <path>
 * --id <id> [--config-file <path>] [--fake=<json FakeFirecrackerBehavior>]`. It serves a small part of
 * the API (GET /, GET /version, PUT /actions, PATCH /vm; every other PUT/PATCH is accepted before
 * boot) and can crash before ready, start slowly, ignore SIGTERM and print console lines.
 * Only Node built-ins are used, so it runs from the sources and from dist alike.
 */
import { rmSync } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";

/** How the fake Firecracker process behaves: crash before ready, start late, ignore SIGTERM, print console lines, exit. */
export interface FakeFirecrackerBehavior {
  /** Exit with this status before the socket listens, after printing `output` (stdout) and `stderr`. */
  crashBeforeReady?: { exitCode: number; output?: string[]; stderr?: string[] };
  /** Wait this long before listening on the API socket. */
  startDelayMs?: number;
  /** Print a line and keep running on SIGTERM (only SIGKILL stops it). */
  ignoreSigterm?: boolean;
  /** Exit 0 on `SendCtrlAltDel`, as Firecracker does when a Linux guest reboots. */
  exitOnCtrlAltDel?: boolean;
  /** Lines the "guest" prints once started (InstanceStart, or at once in config-file mode). */
  consoleLines?: string[];
  /** Pause between console lines; default 5 ms. */
  consoleIntervalMs?: number;
  /** Exit with status 1 this long after the API is ready. */
  exitAfterMs?: number;
}

function argValue(argv: string[], name: string): string | undefined {
  const index = argv.indexOf(name);
  return index === -1 ? undefined : argv[index + 1];
}

function main(argv: string[]): void {
  const fakeArg = argv.find((arg) => arg.startsWith("--fake="));
  const behavior: FakeFirecrackerBehavior = fakeArg ? JSON.parse(fakeArg.slice("--fake=".length)) : {};
  const socketPath = argValue(argv, "--api-sock") ?? "/run/firecracker.socket";
  const id = argValue(argv, "--id") ?? "anonymous-instance";
  const configFile = argValue(argv, "--config-file");
  const log = (message: string) =>
    process.stdout.write(`${new Date().toISOString()} [${id}:main] ${message}\n`);
  log("Running Firecracker v1.14.2 (sbx fake)");
  log(`argv ${JSON.stringify(argv.filter((arg) => !arg.startsWith("--fake=")))}`);

  if (behavior.crashBeforeReady) {
    for (const line of behavior.crashBeforeReady.output ?? []) process.stdout.write(`${line}\n`);
    for (const line of behavior.crashBeforeReady.stderr ?? []) process.stderr.write(`${line}\n`);
    process.exitCode = behavior.crashBeforeReady.exitCode;
    return;
  }
  process.on("SIGTERM", () => {
    if (behavior.ignoreSigterm) {
      log("ignoring SIGTERM");
      return;
    }
    process.exit(143);
  });
  // Read stdin like Firecracker's serial console does, and echo it so tests can see it arrived.
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (data: string) => {
    for (const line of data.split("\n").filter(Boolean)) process.stdout.write(`serial-in: ${line}\n`);
  });
  process.stdin.on("error", () => {});

  let state: "Not started" | "Running" | "Paused" = "Not started";
  const printConsole = () => {
    const lines = [...(behavior.consoleLines ?? [])];
    const interval = behavior.consoleIntervalMs ?? 5;
    const next = () => {
      const line = lines.shift();
      if (line === undefined) return;
      process.stdout.write(`${line}\n`);
      setTimeout(next, interval);
    };
    next();
  };

  const reply = (res: ServerResponse, status: number, body?: unknown) => {
    const text = body === undefined ? "" : JSON.stringify(body);
    res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
    res.end(text);
  };
  const fault = (res: ServerResponse, message: string) => reply(res, 400, { fault_message: message });

  const handle = (req: IncomingMessage, res: ServerResponse, body: string) => {
    const { method, url } = req;
    let json: Record<string, unknown> = {};
    if (body) {
      try {
        json = JSON.parse(body);
      } catch {
        return fault(res, "invalid JSON body");
      }
    }
    if (method === "GET" && url === "/") {
      return reply(res, 200, { app_name: "Firecracker", id, state, vmm_version: "1.14.2" });
    }
    if (method === "GET" && url === "/version") return reply(res, 200, { firecracker_version: "1.14.2" });
    if (method === "PUT" && url === "/actions") {
      const action = json.action_type;
      if (action === "InstanceStart") {
        if (state !== "Not started")
          return fault(res, "The requested operation is not supported after starting the microVM.");
        state = "Running";
        reply(res, 204);
        printConsole();
        return;
      }
      if (action === "SendCtrlAltDel") {
        if (state === "Not started")
          return fault(res, "The requested operation is not supported before starting the microVM.");
        reply(res, 204);
        if (behavior.exitOnCtrlAltDel) {
          log("guest rebooted (Ctrl-Alt-Del); exiting");
          setTimeout(() => process.exit(0), 5);
        }
        return;
      }
      if (action === "FlushMetrics") return reply(res, 204);
      return fault(res, `unknown action_type ${String(action)}`);
    }
    if (method === "PATCH" && url === "/vm") {
      if (state === "Not started")
        return fault(res, "The requested operation is not supported before starting the microVM.");
      if (json.state === "Paused") state = "Paused";
      else if (json.state === "Resumed") state = "Running";
      else return fault(res, "unknown state");
      return reply(res, 204);
    }
    if (method === "PUT" || method === "PATCH") {
      if (
        state !== "Not started" &&
        method === "PUT" &&
        url !== "/snapshot/create" &&
        url !== "/logger" &&
        url !== "/metrics"
      ) {
        return fault(res, "The requested operation is not supported after starting the microVM.");
      }
      return reply(res, 204);
    }
    return fault(res, `Invalid request method and/or path: ${method} ${url}`);
  };

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => handle(req, res, Buffer.concat(chunks).toString("utf8")));
  });
  const listen = () => {
    rmSync(socketPath, { force: true });
    server.listen(socketPath, () => {
      log(`Listening on API socket ("${socketPath}").`);
      if (configFile) {
        state = "Running";
        log("Successfully started microvm that was configured from one single json");
        printConsole();
      }
      if (behavior.exitAfterMs !== undefined) {
        setTimeout(() => {
          log("exiting on its own (exitAfterMs)");
          process.exit(1);
        }, behavior.exitAfterMs);
      }
    });
  };
  if (behavior.startDelayMs) setTimeout(listen, behavior.startDelayMs);
  else listen();
}

main(process.argv.slice(2));
