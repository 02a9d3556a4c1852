import type { Redis, RedisOptions } from 'ioredis';
import { KvlabError } from '../tensor/kvlab-error.ts';

/** Redis could not be reached, or an option naming it is malformed. */
export class RedisError extends KvlabError {
  constructor(message: string) {
    super('redis', message);
  }
}

export interface RedisAddress {
  host: string;
  port: number;
  db: number;
  /** The URL as given, for messages. */
  url: string;
}

/** `redis://HOST:PORT/N` (port default 6379, database default 0); anything else is refused naming the option. */
export function parseRedisUrl(url: string, option: string): RedisAddress {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new RedisError(`${option} must be a URL like redis://127.0.0.1:6379/0, got "${url}"`);
  }
  if (u.protocol !== 'redis:') throw new RedisError(`${option} must start with redis:// (got "${url}")`);
  if (!u.hostname) throw new RedisError(`${option} ${url} names no host`);
  const port = u.port ? Number(u.port) : 6379;
  const path = u.pathname.replace(/^\//, '');
  if (path !== '' && !/^\d+$/.test(path)) throw new RedisError(`${option} ${url}: the path must be a database number (/0 .. /15), got "/${path}"`);
  const db = path === '' ? 0 : Number(path);
  if (u.search || u.hash) throw new RedisError(`${option} ${url}: query strings and fragments are not understood`);
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port, db, url };
}

/**
 * A connected ioredis client (the package loads here, on first use, so commands without Redis do not pay for
 * it). The first connection is tried once: an unreachable server is a RedisError naming the URL, not a
 * silent retry loop; once connected, the client reconnects as usual.
 */
export async function connectRedis(address: RedisAddress, extra: RedisOptions = {}): Promise<Redis> {
  const { Redis: Client } = await import('ioredis');
  let connected = false;
  const client = new Client({
    host: address.host,
    port: address.port,
    db: address.db,
    lazyConnect: true,
    connectTimeout: 5000,
    retryStrategy: (times) => (connected ? Math.min(times * 200, 2000) : null),
    ...extra,
  });
  // Errors after connecting surface through the commands that fail; without a listener ioredis prints them.
  client.on('error', () => {});
  try {
    await client.connect();
    await client.ping();
  } catch (e) {
    client.disconnect();
    throw new RedisError(`cannot reach Redis at ${address.url}: ${(e as Error).message}`);
  }
  connected = true;
  return client;
}
