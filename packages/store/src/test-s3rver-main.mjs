// Runs s3rver (an S3-protocol server from npm) on 127.0.0.1 in its own process, so a test can SIGKILL
// it mid-transfer. argv: data directory, bucket. Prints {"port":N} once listening.
import S3rver from "s3rver";

const [directory, bucket] = process.argv.slice(2);
const server = new S3rver({
  address: "127.0.0.1",
  port: 0,
  silent: true,
  directory,
  configureBuckets: [{ name: bucket }],
});
const { port } = await server.run();
process.stdout.write(`${JSON.stringify({ port })}\n`);
process.on("SIGTERM", () => server.close().then(() => process.exit(0)));
