// Where an HTTP server listens and the URL clients dial: shared by the gateway and the AO units.
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';

export interface Listening {
  url: string;
  close(): Promise<void>;
}

/** Listens on host:port (port 0: any free port). */
export async function listen(app: FastifyInstance, port: number, host = '127.0.0.1'): Promise<Listening> {
  await app.listen({ port, host });
  const address = app.server.address() as AddressInfo;
  // A wildcard address is not one a client can dial; loopback reaches it.
  const shown = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return {
    url: `http://${shown.includes(':') ? `[${shown}]` : shown}:${address.port}`,
    // Requests still open a second after close (long polls, keep-alive sockets of busy clients)
    // are cut: a unit that is shutting down must not wait for its clients to go away.
    close: () => {
      const closed = app.close();
      setTimeout(() => app.server.closeAllConnections(), 1000).unref();
      return closed;
    },
  };
}
