// The fake API in its own process, so the benchmark's client and floor do not share an event loop with
// the server they measure. Prints the socket path, serves until stdin closes.
import { startFakeFirecrackerApi } from "../src/testing/fake-api-server.ts";

const api = await startFakeFirecrackerApi();
process.stdout.write(`${api.socketPath}\n`);
process.stdin.resume();
process.stdin.on("end", () => void api.close().then(() => process.exit(0)));
