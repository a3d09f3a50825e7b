// arlocal (a local Arweave gateway) for the tests: started in this process on a free loopback
// port, with its database and its log file in a temporary folder removed when it stops.
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type RequestListener, type Server } from 'node:http';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pkg from 'arlocal';

type ArLocalInstance = InstanceType<typeof pkg.default>;
const ArLocal = ((pkg as unknown as { default?: typeof pkg.default }).default ?? pkg) as typeof pkg.default;

async function freePort(): Promise<number> {
  const probe = createNetServer().listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const { port } = probe.address() as AddressInfo;
  probe.close();
  await once(probe, 'close');
  return port;
}

/** arlocal listens on every interface; this makes it listen on loopback only. */
function bindLoopback(arlocal: ArLocalInstance, port: number): void {
  const app = (arlocal as unknown as { app: { callback(): RequestListener; listen: unknown } }).app;
  app.listen = (_port: number, ready: () => void): Server => createServer(app.callback()).listen(port, '127.0.0.1', ready);
}

export interface RunningArlocal {
  url: string;
  /** Gives `address` AR so that it can pay for transactions (arlocal refuses them otherwise). */
  mint(address: string): Promise<void>;
  stop(): Promise<void>;
}

export async function startArlocal(): Promise<RunningArlocal> {
  const startDir = process.cwd();
  const root = mkdtempSync(join(tmpdir(), 'verity-arlocal-'));
  const dbPath = join(root, 'db');
  const port = await freePort();
  // arlocal appends every request to ./logs: keep it in the temporary folder.
  process.chdir(root);
  const arlocal = new ArLocal(port, false, dbPath);
  bindLoopback(arlocal, port);
  await arlocal.start();
  const server = arlocal.getServer();
  if (!server.listening) await once(server, 'listening');
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    async mint(address) {
      const res = await fetch(`${url}/mint/${address}/1000000000000000`);
      if (!res.ok) throw new Error(`arlocal mint: ${res.status}`);
    },
    async stop() {
      const closed = once(server, 'close');
      await arlocal.stop();
      // stop() closes the server but neither drops keep-alive sockets nor waits for them.
      server.closeAllConnections();
      await closed;
      // The rest of stop() (closing and deleting its database) runs on in the background.
      for (let i = 0; i < 50 && existsSync(dbPath); i++) await sleep(100);
      process.chdir(startDir);
      rmSync(root, { recursive: true, force: true });
    },
  };
}
