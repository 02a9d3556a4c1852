import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CONTEXT_FILE_EXTENSION, ContextFileError, decodeContextFile, encodeContextFile, readContextFile, readContextHeader, writeContextFile } from '../cache/context-file.ts';
import type { KvCache } from '../cache/kv-cache.ts';
import type { BuiltContext } from './context-worker.ts';
import type { ContextSpec, ConversationContext } from '../engine/conversation-context.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import type { SharedContext } from '../engine/scheduler-types.ts';
import type { ChatMessage } from '../model/chat-template.ts';
import type { NamedRange } from '../press/protect.ts';
import type { Span } from '../press/types.ts';

/** Everything kept about a stored context besides its rows (the file header's metadata). */
export interface ContextRecord {
  id: string;
  /** Who may see and reuse it: a hash of the API key that created it ('local' without keys). */
  tenant: string;
  createdAt: string;
  spec: ContextSpec;
  messages: ChatMessage[];
  rendered: string;
  method: string;
  ratio: number;
  protect: string;
  ids: number[];
  prefix: Span;
  context: Span;
  ranges: NamedRange[];
  contextTokens: number;
  keptRatio: number;
  /** K+V bytes the compressed cache holds. */
  bytes: number;
  perLayerKept: number[];
  timings: { prefillMs: number; scoreMs: number };
}

interface Entry {
  record: ContextRecord;
  /** The file holding its rows (null in a store without a folder). */
  path: string | null;
  /** Its rows are kept by the store's remote (Redis), not in a file. */
  remote: boolean;
  fileBytes: number;
  /** The rows, once loaded (contexts found at start or listed by the remote load on first use). */
  shared: SharedContext | null;
  loading: Promise<SharedContext> | null;
}

/**
 * Where a store shared by several processes keeps its contexts (Redis): each one whole, in the bytes of a
 * context file, listed per tenant. A put becomes visible only when whole.
 */
export interface RemoteContexts {
  /** Names the store in messages (its URL). */
  readonly where: string;
  put(record: ContextRecord, fingerprint: string, file: Buffer): Promise<void>;
  /** Changes whenever the tenant's listing does (a put or delete). */
  version(tenant: string): Promise<string>;
  /** The tenant's contexts saved with this model fingerprint, with their sizes in bytes. */
  list(tenant: string, fingerprint: string): Promise<{ record: ContextRecord; bytes: number }[]>;
  /** The context's bytes (null if it is gone) and the name of the entry holding them, for messages. */
  get(id: string): Promise<{ bytes: Buffer | null; entry: string }>;
  delete(tenant: string, id: string): Promise<boolean>;
  close(): Promise<void>;
}

/** A stored context whose rows cannot be used (corrupted, truncated...): the message says which and why. */
export class ContextUnavailableError extends Error {
  constructor(
    readonly id: string,
    override readonly cause: Error,
  ) {
    super(`stored context ${id} cannot be loaded: ${cause.message}`);
    this.name = 'ContextUnavailableError';
  }
}

export interface ScanReport {
  listed: number;
  skipped: { file: string; reason: string }[];
}

/**
 * Compressed contexts by id, each owned by a tenant, persisted one file each in a folder, or in a remote
 * store that several servers share (`remote`), or kept in memory only when there is neither. At start only
 * headers are read; rows load on first use and stay loaded (the process's pool of contexts).
 */
export class ContextStore {
  private readonly entries = new Map<string, Entry>();
  /** The remote listing version each tenant's entries reflect. */
  private readonly listed = new Map<string, string>();

  constructor(
    readonly lm: LoadedModel,
    readonly fingerprint: string,
    readonly dir: string | null,
    readonly remote: RemoteContexts | null = null,
  ) {
    if (dir && remote) throw new Error('a context store keeps its contexts in a folder or a remote store, not both');
    if (dir) mkdirSync(dir, { recursive: true });
  }

  /** Where the contexts are kept, for messages. */
  get where(): string {
    return this.remote?.where ?? this.dir ?? '(memory only)';
  }

  /**
   * Brings the tenant's listing up to date with the remote store: contexts another server added appear
   * (their rows load on first use), contexts it removed disappear. Nothing to do without a remote.
   */
  async refresh(tenant: string): Promise<void> {
    if (!this.remote) return;
    const version = await this.remote.version(tenant);
    if (this.listed.get(tenant) === version) return;
    const listed = await this.remote.list(tenant, this.fingerprint);
    const ids = new Set<string>();
    for (const { record, bytes } of listed) {
      ids.add(record.id);
      if (!this.entries.has(record.id)) this.entries.set(record.id, { record: checkRecord(record as unknown as Record<string, unknown>, null), path: null, remote: true, fileBytes: bytes, shared: null, loading: null });
    }
    for (const [id, e] of this.entries) if (e.remote && e.record.tenant === tenant && !ids.has(id)) this.entries.delete(id);
    // A change between reading the version and the listing leaves the version behind: the next call re-reads.
    this.listed.set(tenant, version);
  }

  /** Lists the folder's context files; files of another model or that fail their header checks are skipped and named. */
  scan(): ScanReport {
    const report: ScanReport = { listed: 0, skipped: [] };
    if (!this.dir) return report;
    for (const file of readdirSync(this.dir).sort()) {
      if (!file.endsWith(CONTEXT_FILE_EXTENSION) || file.startsWith('.')) continue;
      const path = join(this.dir, file);
      try {
        const header = readContextHeader(path);
        if (header.fingerprint !== this.fingerprint) throw new ContextFileError(path, 'other-model', 'the context was saved by another model');
        const record = checkRecord(header.meta, file);
        this.entries.set(record.id, { record, path, remote: false, fileBytes: statSync(path).size, shared: null, loading: null });
        report.listed++;
      } catch (e) {
        report.skipped.push({ file, reason: (e as Error).message });
      }
    }
    return report;
  }

  /** Registers a freshly compressed context under a new id and writes its file (or remote entry); returns its record. */
  async add(tenant: string, ctx: ConversationContext, built: BuiltContext, protect: string): Promise<{ record: ContextRecord; saveMs: number }> {
    const record = contextRecord(`ctx_${randomBytes(12).toString('hex')}`, tenant, ctx, built, protect);
    const t0 = performance.now();
    const meta = record as unknown as Record<string, unknown>;
    const path = this.dir ? join(this.dir, `${record.id}${CONTEXT_FILE_EXTENSION}`) : null;
    let fileBytes = 0;
    if (path) fileBytes = writeContextFile(path, built.session.cache, this.fingerprint, meta);
    else if (this.remote) {
      const file = Buffer.concat(encodeContextFile(built.session.cache, this.fingerprint, meta, this.remote.where));
      await this.remote.put(record, this.fingerprint, file);
      fileBytes = file.length;
    }
    this.entries.set(record.id, { record, path, remote: this.remote !== null, fileBytes, shared: sharedOf(record, built.session.cache), loading: null });
    return { record, saveMs: performance.now() - t0 };
  }

  /** Bytes of the context's file (0 in memory-only stores). */
  fileBytes(id: string): number {
    return this.entries.get(id)?.fileBytes ?? 0;
  }

  /** Every context, whoever owns it (the command line's view of a store). */
  listAll(): ContextRecord[] {
    return [...this.entries.values()].map((e) => e.record);
  }

  list(tenant: string): ContextRecord[] {
    return [...this.entries.values()].filter((e) => e.record.tenant === tenant).map((e) => e.record);
  }

  get(tenant: string, id: string): ContextRecord | undefined {
    const e = this.entries.get(id);
    return e && e.record.tenant === tenant ? e.record : undefined;
  }

  /** Removes a context and its file (or remote entry); sequences already running on it finish on the rows they hold. */
  async remove(tenant: string, id: string): Promise<boolean> {
    const e = this.entries.get(id);
    if (!e || e.record.tenant !== tenant) return false;
    this.entries.delete(id);
    if (e.path) rmSync(e.path, { force: true });
    if (e.remote) await this.remote!.delete(tenant, id);
    return true;
  }

  /** The context's rows as a SharedContext, loaded (and verified) from its file or remote entry on first use. */
  async shared(tenant: string, id: string): Promise<SharedContext> {
    const e = this.entries.get(id);
    if (!e || e.record.tenant !== tenant) throw new Error(`no context ${id}`);
    if (e.shared) return e.shared;
    e.loading ??= this.load(e).finally(() => (e.loading = null));
    return e.loading;
  }

  private async load(e: Entry): Promise<SharedContext> {
    const id = e.record.id;
    try {
      let cache: KvCache;
      if (e.remote) {
        const { bytes, entry } = await this.remote!.get(id);
        if (!bytes) throw new Error(`${entry} is gone (removed from ${this.remote!.where})`);
        const read = decodeContextFile(bytes, entry, this.fingerprint);
        const record = checkRecord(read.header.meta, null);
        if (record.id !== id || record.tenant !== e.record.tenant) throw new ContextFileError(entry, 'corrupted', `the entry holds context ${record.id}, not ${id}`);
        cache = read.cache;
      } else cache = readContextFile(e.path!, this.fingerprint).cache;
      e.shared = sharedOf(e.record, cache);
      return e.shared;
    } catch (err) {
      throw new ContextUnavailableError(id, err as Error);
    }
  }

  /** The tenant's context whose messages are the longest leading run of these messages, if any. */
  match(tenant: string, messages: ChatMessage[]): ContextRecord | undefined {
    let best: ContextRecord | undefined;
    for (const e of this.entries.values()) {
      const r = e.record;
      if (r.tenant !== tenant || r.messages.length > messages.length) continue;
      if (best && best.messages.length >= r.messages.length) continue;
      if (r.messages.every((m, i) => m.role === messages[i]!.role && m.content === messages[i]!.content)) best = r;
    }
    return best;
  }

  /** Bytes of K+V rows held in memory by loaded contexts. */
  loadedBytes(): number {
    let total = 0;
    for (const e of this.entries.values()) if (e.shared) total += e.shared.cache.bytes();
    return total;
  }

  get size(): number {
    return this.entries.size;
  }
}

/** The record of a compressed context: what its file's header keeps besides the rows. */
export function contextRecord(id: string, tenant: string, ctx: ConversationContext, built: BuiltContext, protect: string): ContextRecord {
  const { report, session } = built;
  return {
    id,
    tenant,
    createdAt: new Date().toISOString(),
    spec: ctx.spec,
    messages: ctx.messages,
    rendered: ctx.rendered,
    method: report.method,
    ratio: report.ratio,
    protect,
    ids: session.ids,
    prefix: session.prefix,
    context: session.context,
    ranges: ctx.ranges,
    contextTokens: report.contextTokens,
    keptRatio: report.contextBytesFull ? report.contextBytesKept / report.contextBytesFull : 1,
    bytes: report.bytesKept,
    perLayerKept: report.perLayerKept,
    timings: { prefillMs: report.timings.prefillMs, scoreMs: report.timings.scoreMs + report.timings.keepMs },
  };
}

/** Writes one context's file (atomically) at any path: what `kvlab compress --save` does. */
export function saveContextFile(path: string, record: ContextRecord, cache: KvCache, fingerprint: string): number {
  return writeContextFile(path, cache, fingerprint, record as unknown as Record<string, unknown>);
}

/** Reads one context's file, verified against the model's fingerprint; errors name the file and problem. */
export function loadContextFile(path: string, fingerprint: string): { record: ContextRecord; shared: SharedContext } {
  const { header, cache } = readContextFile(path, fingerprint);
  const record = checkRecord(header.meta, null);
  return { record, shared: sharedOf(record, cache) };
}

function sharedOf(r: ContextRecord, cache: KvCache): SharedContext {
  return { id: r.id, cache, ids: r.ids, prefix: r.prefix, context: r.context, method: r.method, ratio: r.ratio };
}

/** The fields a request path relies on, checked on a record read from a file. */
function checkRecord(meta: Record<string, unknown>, file: string | null): ContextRecord {
  const r = meta as Partial<ContextRecord>;
  const ok =
    typeof r.id === 'string' &&
    (file === null || `${r.id}${CONTEXT_FILE_EXTENSION}` === file) &&
    typeof r.tenant === 'string' &&
    Array.isArray(r.ids) &&
    Array.isArray(r.messages) &&
    typeof r.rendered === 'string' &&
    r.spec !== undefined &&
    r.prefix !== undefined &&
    r.context !== undefined;
  if (!ok) throw new Error(`${file ?? 'context file'}: the header's context metadata is incomplete or names another id`);
  return r as ContextRecord;
}
