// Test helper run as its own process: fills a shared chunk cache with every memory chunk of a build
// from a filesystem store, then prints its cache stats. argv: store dir, cache dir, max bytes, build id.
import { ChunkCache } from "./chunk-cache.ts";
import { FilesystemStore } from "./filesystem-store.ts";
import { RemoteMemory } from "./remote-memory.ts";

const [storeDir, cacheDir, maxBytes, build] = process.argv.slice(2) as [string, string, string, string];
await using store = new FilesystemStore({ directory: storeDir });
await using cache = await ChunkCache.open({ directory: cacheDir, maxBytes: Number(maxBytes) });
const memory = new RemoteMemory({ store, cache });
const table = await memory.chunkTable(build);
await Promise.all(table.chunks.map((chunk) => memory.ensureChunk(build, chunk.offset)));
process.stdout.write(`${JSON.stringify(cache.stats())}\n`);
