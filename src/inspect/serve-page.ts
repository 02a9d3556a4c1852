import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ServedPage {
  url: string;
  close(): Promise<void>;
}

/**
 * Serves one page on the loopback interface only: GET / returns the page, GET /data.json the JSON export;
 * anything else is 404. Port 0 takes any free port.
 */
export function servePage(html: string, json: string, port: number): Promise<ServedPage> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
    } else if (path === '/' || path === '/index.html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' }).end(req.method === 'HEAD' ? undefined : html);
    } else if (path === '/data.json') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(req.method === 'HEAD' ? undefined : json);
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(new Error(err.code === 'EADDRINUSE' ? `port ${port} on 127.0.0.1 is in use; pick another with --port (0 takes any free port)` : err.message)),
    );
    server.listen(port, '127.0.0.1', () => {
      const { port: bound } = server.address() as AddressInfo;
      resolve({
        url: `http://127.0.0.1:${bound}/`,
        close: () => new Promise<void>((done) => server.close(() => done())),
      });
    });
  });
}
