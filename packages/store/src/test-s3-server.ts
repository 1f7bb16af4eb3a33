// Test helper: a real S3-protocol server (s3rver) on loopback, in a child process the test owns.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { S3Store, type S3StoreOptions } from "./s3-store.ts";

/** s3rver's built-in account. */
export const S3RVER_CREDENTIALS = { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" };

export class TestS3Server implements AsyncDisposable {
  readonly endpoint: string;
  readonly bucket: string;
  readonly dataDir: string;
  readonly #child: ChildProcess;

  private constructor(child: ChildProcess, port: number, bucket: string, dataDir: string) {
    this.#child = child;
    this.endpoint = `http://127.0.0.1:${port}`;
    this.bucket = bucket;
    this.dataDir = dataDir;
  }

  static async start(bucket = "sbx-builds"): Promise<TestS3Server> {
    const dataDir = await mkdtemp(join(tmpdir(), "sbx-s3rver-"));
    const child = spawn(
      process.execPath,
      [new URL("./test-s3rver-main.mjs", import.meta.url).pathname, dataDir, bucket],
      {
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    const lines = createInterface({ input: child.stdout as NonNullable<typeof child.stdout> });
    const exited = once(child, "exit").then(([code]) => {
      throw new Error(`s3rver exited with ${code} before listening`);
    });
    const [line] = (await Promise.race([once(lines, "line"), exited])) as [string];
    lines.close();
    const { port } = JSON.parse(line) as { port: number };
    return new TestS3Server(child, port, bucket, dataDir);
  }

  get pid(): number | undefined {
    return this.#child.pid;
  }

  store(options: Partial<S3StoreOptions> = {}): S3Store {
    return new S3Store({
      bucket: this.bucket,
      prefix: "sbx",
      endpoint: this.endpoint,
      region: "us-east-1",
      credentials: S3RVER_CREDENTIALS,
      ...options,
    });
  }

  /** SIGKILL: connections die mid-transfer, as when a store host fails. */
  async kill(): Promise<void> {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return;
    const exited = once(this.#child, "exit");
    this.#child.kill("SIGKILL");
    await exited;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill();
    await rm(this.dataDir, { recursive: true, force: true });
  }
}
