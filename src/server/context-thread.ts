/**
 * The context thread of `kvlab serve`: loads the server's model once and does the long synchronous work on
 * contexts (compressing a posted one, re-scoring a stored one for the inspector), one request at a time, so a
 * long prefill and scoring never hold the event loop that streams other requests' tokens.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { encodeContextFile } from '../cache/context-file.ts';
import { compressContext } from '../engine/compress-context.ts';
import { conversationContext } from '../engine/conversation-context.ts';
import { persistentFingerprint } from '../engine/model-fingerprint.ts';
import { loadModelFromSpec, type ModelLoadSpec } from '../engine/model-load-spec.ts';
import { getPress } from '../press/registry.ts';
import type { ContextThreadReply, ContextThreadRequest } from './context-thread-protocol.ts';
import { inspectStored } from './inspect-stored.ts';

const port = parentPort;
if (!port) throw new Error('context-thread.ts runs as a worker thread of `kvlab serve`');

try {
  const lm = loadModelFromSpec(workerData as ModelLoadSpec);
  const fingerprint = persistentFingerprint(lm);
  port.postMessage({ type: 'ready', fingerprint } satisfies ContextThreadReply);
  const handle = async (m: ContextThreadRequest): Promise<void> => {
    try {
      if (m.kind === 'inspect') {
        port.postMessage({ type: 'inspected', id: m.id, result: await inspectStored(lm, m.request) } satisfies ContextThreadReply);
        return;
      }
      const r = m.request;
      const { session, report } = compressContext(lm, conversationContext(lm, r.spec), getPress(r.method), r.ratio, r.protection, r.auto);
      // One fresh buffer, transferred: chunks may be views into the cache or into Node's shared Buffer pool.
      const file = Buffer.concat(encodeContextFile(session.cache, fingerprint, {}, 'the context thread'));
      const bytes = new Uint8Array(file.length);
      bytes.set(file);
      const reply: ContextThreadReply = { type: 'compressed', id: m.id, report, ids: session.ids, prefix: session.prefix, context: session.context, file: bytes };
      port.postMessage(reply, [bytes.buffer]);
    } catch (e) {
      port.postMessage({ type: 'error', id: m.id, message: (e as Error).message } satisfies ContextThreadReply);
    }
  };
  // One request at a time, in arrival order.
  let queue = Promise.resolve();
  port.on('message', (m: ContextThreadRequest) => {
    queue = queue.then(() => handle(m));
  });
} catch (e) {
  port.postMessage({ type: 'load-error', message: (e as Error).message } satisfies ContextThreadReply);
}
