import type { Redis } from 'ioredis';
import { connectRedis, RedisError, type RedisAddress } from '../queue/redis-connection.ts';
import type { ContextRecord, RemoteContexts } from './context-store.ts';

const PREFIX = 'kvlab:contexts';
const indexKey = (tenant: string) => `${PREFIX}:index:${tenant}`;
const dataKey = (id: string) => `${PREFIX}:data:${id}`;
const versionKey = (tenant: string) => `${PREFIX}:version:${tenant}`;

interface IndexEntry {
  fingerprint: string;
  bytes: number;
  record: ContextRecord;
}

/**
 * Contexts kept in Redis for every server on it: one string per context holding the bytes of its context
 * file (the disk store's format, checksum included), and per tenant a hash from id to its record. Both are
 * written in one MULTI/EXEC, so a context is listed only once its bytes are there whole. A counter per
 * tenant moves with every change, so a replica re-reads a listing only when it changed.
 */
export class RedisContexts implements RemoteContexts {
  private constructor(
    private readonly client: Redis,
    readonly where: string,
  ) {}

  static async open(address: RedisAddress): Promise<RedisContexts> {
    return new RedisContexts(await connectRedis(address), address.url);
  }

  async put(record: ContextRecord, fingerprint: string, file: Buffer): Promise<void> {
    const entry: IndexEntry = { fingerprint, bytes: file.length, record };
    const replies = await this.client.multi().set(dataKey(record.id), file).hset(indexKey(record.tenant), record.id, JSON.stringify(entry)).incr(versionKey(record.tenant)).exec();
    const failed = replies?.find(([err]) => err);
    if (!replies || failed) throw new RedisError(`${this.where}: storing context ${record.id} failed: ${failed?.[0]?.message ?? 'the transaction was aborted'}`);
  }

  async version(tenant: string): Promise<string> {
    return (await this.client.get(versionKey(tenant))) ?? '0';
  }

  async list(tenant: string, fingerprint: string): Promise<{ record: ContextRecord; bytes: number }[]> {
    const all = await this.client.hgetall(indexKey(tenant));
    const out: { record: ContextRecord; bytes: number }[] = [];
    for (const [id, text] of Object.entries(all)) {
      let entry: IndexEntry;
      try {
        entry = JSON.parse(text) as IndexEntry;
      } catch {
        throw new RedisError(`${this.where}: the index entry of context ${id} (${indexKey(tenant)}) is not JSON`);
      }
      if (entry.fingerprint !== fingerprint) continue;
      if (entry.record?.id !== id || entry.record.tenant !== tenant) throw new RedisError(`${this.where}: the index entry of context ${id} (${indexKey(tenant)}) names another context or tenant`);
      out.push({ record: entry.record, bytes: entry.bytes });
    }
    return out;
  }

  async get(id: string): Promise<{ bytes: Buffer | null; entry: string }> {
    return { bytes: await this.client.getBuffer(dataKey(id)), entry: `${this.where} ${dataKey(id)}` };
  }

  async delete(tenant: string, id: string): Promise<boolean> {
    const replies = await this.client.multi().hdel(indexKey(tenant), id).del(dataKey(id)).incr(versionKey(tenant)).exec();
    return Number(replies?.[0]?.[1] ?? 0) > 0;
  }

  async close(): Promise<void> {
    await this.client.quit().catch(() => this.client.disconnect());
  }
}
