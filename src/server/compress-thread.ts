/**
 * The compression thread of `kvlab serve`: loads the server's model once and compresses the contexts posted to
 * it, so a long prefill and scoring never hold the event loop that streams other requests' tokens.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { encodeContextFile } from '../cache/context-file.ts';
import { compressContext } from '../engine/compress-context.ts';
import { conversationContext } from '../engine/conversation-context.ts';
import { persistentFingerprint } from '../engine/model-fingerprint.ts';
import { loadModelFromSpec, type ModelLoadSpec } from '../engine/model-load-spec.ts';
import { getPress } from '../press/registry.ts';
import type { CompressThreadReply, CompressThreadRequest } from './compress-protocol.ts';

const port = parentPort;
if (!port) throw new Error('compress-thread.ts runs as a worker thread of `kvlab serve`');

try {
  const lm = loadModelFromSpec(workerData as ModelLoadSpec);
  const fingerprint = persistentFingerprint(lm);
  port.postMessage({ type: 'ready', fingerprint } satisfies CompressThreadReply);
  port.on('message', ({ id, request: r }: CompressThreadRequest) => {
    try {
      const ctx = conversationContext(lm, r.spec);
      const { session, report } = compressContext(lm, ctx, getPress(r.method), r.ratio, r.protection, r.auto);
      // One fresh buffer, transferred: chunks may be views into the cache or into Node's shared Buffer pool.
      const file = Buffer.concat(encodeContextFile(session.cache, fingerprint, {}, 'the compression thread'));
      const bytes = new Uint8Array(file.length);
      bytes.set(file);
      const reply: CompressThreadReply = { type: 'done', id, report, ids: session.ids, prefix: session.prefix, context: session.context, file: bytes };
      port.postMessage(reply, [bytes.buffer]);
    } catch (e) {
      port.postMessage({ type: 'error', id, message: (e as Error).message } satisfies CompressThreadReply);
    }
  });
} catch (e) {
  port.postMessage({ type: 'load-error', message: (e as Error).message } satisfies CompressThreadReply);
}
