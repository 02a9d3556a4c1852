import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CONTEXT_FILE_EXTENSION, ContextFileError, readContextFile, readContextHeader, writeContextFile } from '../cache/context-file.ts';
import type { KvCache } from '../cache/kv-cache.ts';
import type { CompressedContext } from '../engine/compress-context.ts';
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
  fileBytes: number;
  /** The rows, once loaded (contexts found at start load on first use). */
  shared: SharedContext | null;
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
 * Compressed contexts by id, each owned by a tenant, persisted one file each in a folder (or kept in
 * memory only when there is none). At start only headers are read; rows load on first use.
 */
export class ContextStore {
  private readonly entries = new Map<string, Entry>();

  constructor(
    readonly lm: LoadedModel,
    readonly fingerprint: string,
    readonly dir: string | null,
  ) {
    if (dir) mkdirSync(dir, { recursive: true });
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
        this.entries.set(record.id, { record, path, fileBytes: statSync(path).size, shared: null });
        report.listed++;
      } catch (e) {
        report.skipped.push({ file, reason: (e as Error).message });
      }
    }
    return report;
  }

  /** Registers a freshly compressed context under a new id and writes its file; returns its record. */
  add(tenant: string, ctx: ConversationContext, built: CompressedContext, protect: string): { record: ContextRecord; saveMs: number } {
    const record = contextRecord(`ctx_${randomBytes(12).toString('hex')}`, tenant, ctx, built, protect);
    const t0 = performance.now();
    const path = this.dir ? join(this.dir, `${record.id}${CONTEXT_FILE_EXTENSION}`) : null;
    const fileBytes = path ? writeContextFile(path, built.session.cache, this.fingerprint, record as unknown as Record<string, unknown>) : 0;
    this.entries.set(record.id, { record, path, fileBytes, shared: sharedOf(record, built.session.cache) });
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

  /** Removes a context and its file; sequences already running on it finish on the rows they hold. */
  remove(tenant: string, id: string): boolean {
    const e = this.entries.get(id);
    if (!e || e.record.tenant !== tenant) return false;
    this.entries.delete(id);
    if (e.path) rmSync(e.path, { force: true });
    return true;
  }

  /** The context's rows as a SharedContext, loaded (and verified) from its file on first use. */
  shared(tenant: string, id: string): SharedContext {
    const e = this.entries.get(id);
    if (!e || e.record.tenant !== tenant) throw new Error(`no context ${id}`);
    if (!e.shared) {
      try {
        const { cache } = readContextFile(e.path!, this.fingerprint);
        e.shared = sharedOf(e.record, cache);
      } catch (err) {
        throw new ContextUnavailableError(id, err as Error);
      }
    }
    return e.shared;
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
export function contextRecord(id: string, tenant: string, ctx: ConversationContext, built: CompressedContext, protect: string): ContextRecord {
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
