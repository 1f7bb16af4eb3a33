// A stand-in for Firecracker's hybrid-vsock host socket, for machines without vsock: it accepts on a
// Unix socket, takes `CONNECT <port>\n`, answers `OK <n>\n` and splices the connection to whatever
// Unix socket serves that port (the agent's), closing without a reply for unknown ports as
// Firecracker does. resetAll() drops every spliced connection, as a snapshot restore does.
import { connect, createServer, type Socket } from "node:net";

/** A running hybrid-vsock stand-in: its socket path, the connections it splices, and a reset of them all (as a restore does). */
export interface HybridVsockProxy extends AsyncDisposable {
  path: string;
  /** Connections currently spliced. */
  readonly active: number;
  resetAll(): void;
}

/** Starts a Unix socket that speaks Firecracker's hybrid-vsock `CONNECT <port>` and forwards to an agent. */
export async function startHybridVsockProxy(options: {
  path: string;
  ports: Record<number, string>;
}): Promise<HybridVsockProxy> {
  const live = new Set<Socket>();
  let hostPort = 1_000_000;
  const server = createServer((socket) => {
    let line = "";
    live.add(socket);
    socket.on("close", () => live.delete(socket));
    socket.on("error", () => socket.destroy());
    const onData = (chunk: Buffer) => {
      line += chunk.toString("latin1");
      const newline = line.indexOf("\n");
      if (newline < 0) {
        if (line.length > 64) socket.destroy();
        return;
      }
      socket.off("data", onData);
      socket.pause();
      const match = /^CONNECT (\d+)$/.exec(line.slice(0, newline));
      const target = match ? options.ports[Number(match[1])] : undefined;
      if (!target) {
        socket.destroy();
        return;
      }
      const upstream = connect({ path: target });
      live.add(upstream);
      upstream.on("close", () => {
        live.delete(upstream);
        socket.destroy();
      });
      upstream.on("error", () => upstream.destroy());
      socket.on("close", () => upstream.destroy());
      upstream.once("connect", () => {
        socket.write(`OK ${hostPort++}\n`);
        const rest = Buffer.from(line.slice(newline + 1), "latin1");
        if (rest.length > 0) upstream.write(rest);
        socket.pipe(upstream);
        upstream.pipe(socket);
        socket.resume();
      });
    };
    socket.on("data", onData);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.path, resolve);
  });
  return {
    path: options.path,
    get active() {
      return live.size;
    },
    resetAll() {
      for (const socket of live) socket.destroy();
    },
    async [Symbol.asyncDispose]() {
      for (const socket of live) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
