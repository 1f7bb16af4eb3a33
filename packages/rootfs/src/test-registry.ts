import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { tempDir } from "./test-oci-helpers.ts";

const run = promisify(execFile);

function hasCommand(name: string): boolean {
  return ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].some((dir) => existsSync(join(dir, name)));
}

/** Why the registry tests cannot run here, or undefined. */
export function registryToolsMissing(): string | undefined {
  if (!hasCommand("docker-registry")) return "docker-registry is not installed (apt install docker-registry)";
  if (!hasCommand("skopeo")) return "skopeo is not installed (apt install skopeo)";
  if (!hasCommand("htpasswd")) return "htpasswd is not installed (apt install apache2-utils)";
  return undefined;
}

async function freeLoopbackPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export interface TestRegistry {
  /** `127.0.0.1:<port>` */
  host: string;
  process: ChildProcess;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Debian's docker-registry on a free loopback port with a temp config; optional htpasswd (bcrypt) login. */
export async function startRegistry(login?: { username: string; password: string }): Promise<TestRegistry> {
  const dir = await tempDir("sbx-registry-");
  const port = await freeLoopbackPort();
  let auth = "";
  if (login) {
    const { stdout } = await run("htpasswd", ["-Bbn", login.username, login.password]);
    await writeFile(join(dir.path, "htpasswd"), stdout);
    auth = `auth:\n  htpasswd:\n    realm: sbx-test\n    path: ${join(dir.path, "htpasswd")}\n`;
  }
  await writeFile(
    join(dir.path, "config.yml"),
    `version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: ${join(dir.path, "data")}\nhttp:\n  addr: 127.0.0.1:${port}\n  secret: sbx-test-secret\n${auth}`,
  );
  const child = spawn("docker-registry", ["serve", join(dir.path, "config.yml")], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000);
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const dispose = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timeout = sleep(5000).then(() => child.kill("SIGKILL"));
      await Promise.race([exited, timeout]);
      await exited;
    }
    await dir[Symbol.asyncDispose]();
  };
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      const response = await fetch(`http://127.0.0.1:${port}/v2/`, { signal: AbortSignal.timeout(1000) });
      await response.body?.cancel();
      if (response.status === 200 || response.status === 401) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline || child.exitCode !== null) {
      await dispose();
      throw new Error(`docker-registry did not start on 127.0.0.1:${port}: ${stderr}`);
    }
    await sleep(100);
  }
  return { host: `127.0.0.1:${port}`, process: child, [Symbol.asyncDispose]: dispose };
}

/** `skopeo copy` a local OCI layout tag (or its only image, when tag is "") to the registry. */
export async function pushLayout(
  layoutDir: string,
  tag: string,
  destination: string,
  options: { all?: boolean; format?: "v2s2" | "oci"; creds?: string } = {},
): Promise<void> {
  await run(
    "skopeo",
    [
      "copy",
      "--quiet",
      "--dest-tls-verify=false",
      ...(options.all ? ["--all"] : []),
      ...(options.format ? ["--format", options.format] : []),
      ...(options.creds ? ["--dest-creds", options.creds] : []),
      tag ? `oci:${layoutDir}:${tag}` : `oci:${layoutDir}`,
      `docker://${destination}`,
    ],
    { timeout: 60_000 },
  );
}

export interface ProxyFaults {
  /** Fail the first request whose path contains one of these with HTTP 503. */
  failOnce?: string[];
  /** Send half of the first response for a path containing this, then reset the connection. */
  resetOnce?: string[];
  /** Flip one byte in every response for a path containing this. */
  corrupt?: string[];
  /** Send half of the first response for a path containing this, then stall until disposed. */
  stallOnce?: string[];
}

export interface BearerProxy {
  host: string;
  requests: string[];
  tokenRequests: string[];
  /** Every blob request with its Range header (undefined when it asked for the whole blob). */
  blobRequests: { path: string; range: string | undefined }[];
  faults: ProxyFaults;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * A bearer-token front for a registry, on loopback: /v2/* needs `Authorization: Bearer <token>` and
 * answers 401 with a Bearer challenge pointing at its own /token endpoint, which issues the token for
 * the right basic credentials. It proxies to the real registry and can inject faults.
 */
export async function startBearerProxy(
  upstream: string,
  login: { username: string; password: string },
  faults: ProxyFaults = {},
): Promise<BearerProxy> {
  const token = "sbx-test-token-5f3a";
  const requests: string[] = [];
  const tokenRequests: string[] = [];
  const blobRequests: { path: string; range: string | undefined }[] = [];
  const used = new Set<string>();
  let host = "";
  const handle = async (request: IncomingMessage, response: ServerResponse) => {
    const url = new URL(request.url ?? "/", `http://${host}`);
    if (url.pathname === "/token") {
      tokenRequests.push(url.search);
      const expected = `Basic ${Buffer.from(`${login.username}:${login.password}`).toString("base64")}`;
      if (request.headers.authorization !== expected) {
        response
          .writeHead(401, { "content-type": "application/json" })
          .end('{"errors":[{"code":"UNAUTHORIZED"}]}');
        return;
      }
      response
        .writeHead(200, { "content-type": "application/json" })
        .end(JSON.stringify({ token, expires_in: 300 }));
      return;
    }
    requests.push(url.pathname);
    if (url.pathname.includes("/blobs/"))
      blobRequests.push({ path: url.pathname, range: request.headers.range });
    if (request.headers.authorization !== `Bearer ${token}`) {
      const repository = /^\/v2\/(.+)\/(manifests|blobs)\//.exec(url.pathname)?.[1] ?? "";
      response
        .writeHead(401, {
          "www-authenticate": `Bearer realm="http://${host}/token",service="sbx-proxy",scope="repository:${repository}:pull"`,
          "content-type": "application/json",
        })
        .end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}');
      return;
    }
    const once = (list: string[] | undefined, kind: string) => {
      const match = list?.find((part) => url.pathname.includes(part));
      if (!match || used.has(`${kind}:${match}`)) return false;
      used.add(`${kind}:${match}`);
      return true;
    };
    if (once(faults.failOnce, "fail")) {
      response.writeHead(503, { "content-type": "text/plain" }).end("injected failure");
      return;
    }
    const upstreamResponse = await fetch(`http://${upstream}${url.pathname}`, {
      headers: request.headers.accept ? { accept: request.headers.accept } : {},
    });
    const whole = Buffer.from(await upstreamResponse.arrayBuffer());
    const headers: Record<string, string> = {};
    for (const name of ["content-type", "docker-content-digest"]) {
      const value = upstreamResponse.headers.get(name);
      if (value) headers[name] = value;
    }
    if (faults.corrupt?.some((part) => url.pathname.includes(part)) && whole.length > 0) {
      whole[Math.floor(whole.length / 2)]! ^= 0xff;
    }
    // Ranges are served from the buffered blob, as registries (and the CDNs behind them) do.
    let status = upstreamResponse.status;
    let body = whole;
    const range = /^bytes=(\d+)-$/.exec(request.headers.range ?? "");
    if (range && status === 200 && url.pathname.includes("/blobs/") && Number(range[1]) < whole.length) {
      const start = Number(range[1]);
      status = 206;
      body = whole.subarray(start);
      headers["content-range"] = `bytes ${start}-${whole.length - 1}/${whole.length}`;
    }
    if (once(faults.resetOnce, "reset")) {
      response.writeHead(status, { ...headers, "content-length": String(body.length) });
      response.write(body.subarray(0, Math.floor(body.length / 2)));
      setTimeout(() => response.socket?.destroy(), 20);
      return;
    }
    if (once(faults.stallOnce, "stall")) {
      response.writeHead(status, { ...headers, "content-length": String(body.length) });
      response.write(body.subarray(0, Math.floor(body.length / 2)));
      return;
    }
    response.writeHead(status, { ...headers, "content-length": String(body.length) }).end(body);
  };
  const server: Server = createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      response.destroy(error as Error);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    host,
    requests,
    tokenRequests,
    blobRequests,
    faults,
    async [Symbol.asyncDispose]() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
