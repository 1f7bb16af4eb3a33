// A loopback stand-in for Firecracker's release downloads and CI kernel bucket, with real ELF
// binaries built by gcc, and faults to inject (wrong sums, truncated bodies, missing files).
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, request as httpRequest, type Server } from "node:http";
import { type AddressInfo, connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Arch } from "@sbx/arch";

const COMPILERS: Record<Arch, string> = { amd64: "gcc", arm64: "aarch64-linux-gnu-gcc" };

/** Why the mirror cannot build its binaries here, or undefined. */
export function mirrorToolsMissing(): string | undefined {
  for (const [arch, compiler] of Object.entries(COMPILERS)) {
    if (!["/usr/bin", "/bin"].some((dir) => existsSync(join(dir, compiler))))
      return `${compiler} is not installed (needed for ${arch} test binaries)`;
  }
  if (!existsSync("/usr/bin/tar") && !existsSync("/bin/tar")) return "tar is not installed";
  return undefined;
}

export function sha256(bytes: Buffer): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** A tiny ELF executable for `arch`, padded so a body cut in half is still many chunks. */
export async function compileElf(dir: string, name: string, arch: Arch, padBytes = 0): Promise<string> {
  const source = join(dir, `${name}.c`);
  await writeFile(
    source,
    `static const char pad[${Math.max(padBytes, 1)}] = {1};\nint main(void) { return pad[0] - 1; }\n`,
  );
  const out = join(dir, name);
  execFileSync(COMPILERS[arch], ["-O0", "-o", out, source], { stdio: "pipe" });
  return out;
}

const UNAME: Record<Arch, string> = { amd64: "x86_64", arm64: "aarch64" };

/** `firecracker-{version}-{uname}.tgz` with `release-…/firecracker-…` and `jailer-…`, as upstream lays it out. */
export async function releaseTarball(options: {
  version: string;
  arch: Arch;
  /** The arch the binaries are really built for (default: arch). */
  binaryArch?: Arch;
  padBytes?: number;
  /** Real binaries to pack instead of compiled stand-ins. */
  binaries?: { firecracker: string; jailer: string };
}): Promise<Buffer> {
  const work = await mkdtemp(join(tmpdir(), "sbx-mirror-tgz-"));
  try {
    const tag = `${options.version}-${UNAME[options.arch]}`;
    const release = join(work, `release-${tag}`);
    await mkdir(release);
    const binaryArch = options.binaryArch ?? options.arch;
    if (options.binaries) {
      await copyFile(options.binaries.firecracker, join(release, `firecracker-${tag}`));
      await copyFile(options.binaries.jailer, join(release, `jailer-${tag}`));
    } else {
      await compileElf(release, `firecracker-${tag}`, binaryArch, options.padBytes);
      await compileElf(release, `jailer-${tag}`, binaryArch);
    }
    await writeFile(join(release, "LICENSE"), "Apache-2.0\n");
    const archive = join(work, "release.tgz");
    execFileSync("tar", ["czf", archive, "-C", work, `release-${tag}`]);
    return await readFile(archive);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

export interface MirrorRequest {
  path: string;
  range: string | undefined;
}

export interface ReleaseMirror {
  /** `http://127.0.0.1:<port>` */
  origin: string;
  releaseBaseUrl: string;
  kernelBucketUrl: string;
  files: Map<string, Buffer>;
  requests: MirrorRequest[];
  /** Paths whose next response sends half of the body, then drops the connection. */
  truncateOnce: Set<string>;
  /** Serve Range requests (default true); false answers 200 with the whole body. */
  ranges: boolean;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Serves `files` by path, Range requests included, and the bucket listing
 * `{bucket}/?list-type=2&prefix=…` as S3's ListObjectsV2 XML over the keys under `/bucket/`.
 */
export async function startReleaseMirror(): Promise<ReleaseMirror> {
  const files = new Map<string, Buffer>();
  const requests: MirrorRequest[] = [];
  const truncateOnce = new Set<string>();
  const mirror = { ranges: true };
  const server: Server = createServer((request, response) => {
    const url = new URL(request.url ?? "/", "http://mirror");
    requests.push({ path: url.pathname, range: request.headers.range });
    if (url.pathname === "/bucket/" && url.searchParams.get("list-type") === "2") {
      const prefix = url.searchParams.get("prefix") ?? "";
      const keys = [...files.keys()]
        .filter((path) => path.startsWith(`/bucket/${prefix}`))
        .map((path) => path.slice("/bucket/".length));
      response
        .writeHead(200, { "content-type": "application/xml" })
        .end(
          `<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>bucket</Name><Prefix>${prefix}</Prefix>${keys
            .map((key) => `<Contents><Key>${key}</Key></Contents>`)
            .join("")}<IsTruncated>false</IsTruncated></ListBucketResult>`,
        );
      return;
    }
    const body = files.get(url.pathname);
    if (!body) {
      response.writeHead(404, { "content-type": "text/plain" }).end("Not Found");
      return;
    }
    let start = 0;
    const range = /^bytes=(\d+)-$/.exec(request.headers.range ?? "");
    if (range && mirror.ranges) {
      start = Number(range[1]);
      if (start >= body.length) {
        response.writeHead(416, { "content-range": `bytes */${body.length}` }).end();
        return;
      }
    }
    const part = body.subarray(start);
    const headers: Record<string, string> = {
      "content-type": "application/octet-stream",
      "content-length": String(part.length),
      "accept-ranges": "bytes",
    };
    if (start > 0) headers["content-range"] = `bytes ${start}-${body.length - 1}/${body.length}`;
    response.writeHead(start > 0 ? 206 : 200, headers);
    if (truncateOnce.delete(url.pathname)) {
      response.write(part.subarray(0, Math.floor(part.length / 2)), () => {
        setTimeout(() => response.socket?.destroy(), 20);
      });
      return;
    }
    response.end(part);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return Object.assign(mirror, {
    origin,
    releaseBaseUrl: `${origin}/releases/download`,
    kernelBucketUrl: `${origin}/bucket`,
    files,
    requests,
    truncateOnce,
    async [Symbol.asyncDispose]() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  });
}

/** Puts a release (tarball + its published `.sha256.txt`) on the mirror; returns the tarball path. */
export function publishRelease(
  mirror: ReleaseMirror,
  version: string,
  arch: Arch,
  tarball: Buffer,
  sums?: string,
): string {
  const name = `firecracker-${version}-${UNAME[arch]}.tgz`;
  const path = `/releases/download/${version}/${name}`;
  mirror.files.set(path, tarball);
  mirror.files.set(`${path}.sha256.txt`, Buffer.from(sums ?? `${sha256(tarball)}  ${name}\n`));
  return path;
}

/** Puts a CI kernel at `/bucket/firecracker-ci/{ci}/{uname}/vmlinux-{version}`; returns its path. */
export function publishKernel(
  mirror: ReleaseMirror,
  ciVersion: string,
  arch: Arch,
  version: string,
  kernel: Buffer,
): string {
  const path = `/bucket/firecracker-ci/${ciVersion}/${UNAME[arch]}/vmlinux-${version}`;
  mirror.files.set(path, kernel);
  return path;
}

export interface TestProxy {
  url: string;
  /** `host:port` of every request it forwarded or tunnelled. */
  targets: string[];
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * An HTTP proxy on loopback: forwards absolute-form requests (http:// targets) and tunnels CONNECT
 * (https:// targets), to loopback targets only, and records each target.
 */
export async function startTestProxy(): Promise<TestProxy> {
  const targets: string[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((request, response) => {
    const target = new URL(request.url ?? "/");
    targets.push(target.host);
    if (target.hostname !== "127.0.0.1") {
      response.writeHead(403).end();
      return;
    }
    const upstream = httpRequest(
      target,
      { method: request.method, headers: { ...request.headers, host: target.host } },
      (answer) => {
        response.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(response);
      },
    );
    upstream.on("error", () => response.destroy());
    request.pipe(upstream);
  });
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  server.on("connect", (request, client: Socket) => {
    const target = request.url ?? "";
    targets.push(target);
    const [host, port] = target.split(":");
    if (host !== "127.0.0.1") {
      client.end("HTTP/1.1 403 Forbidden\r\n\r\n");
      return;
    }
    const upstream = connect(Number(port), host, () => {
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      upstream.pipe(client);
      client.pipe(upstream);
    });
    sockets.add(upstream);
    upstream.on("close", () => sockets.delete(upstream));
    for (const socket of [client, upstream]) {
      socket.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    targets,
    async [Symbol.asyncDispose]() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
