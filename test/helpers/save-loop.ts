/**
 * A child process for the crash test: compresses one context, then adds it to the store at argv[2] again and
 * again, printing "saved <id>" once each add (write, fsync, rename) has returned, until it is killed.
 */
import { compressContext, DEFAULT_CONTEXT_PROTECTION } from '../../src/engine/compress-context.ts';
import { conversationContext } from '../../src/engine/conversation-context.ts';
import { persistentFingerprint } from '../../src/engine/model-fingerprint.ts';
import { ContextStore } from '../../src/server/context-store.ts';
import { selectBackend } from '../../src/tensor/select-backend.ts';
import { qaRows, tinyModel } from './tiny-model.ts';

const lm = tinyModel(selectBackend());
const store = new ContextStore(lm, persistentFingerprint(lm), process.argv[2]!);
const ctx = conversationContext(lm, { kind: 'text', text: qaRows()[0]!.context });
const built = compressContext(lm, ctx, (await import('../../src/press/registry.ts')).getPress('snapkv'), 0.9, DEFAULT_CONTEXT_PROTECTION);
for (;;) {
  const { record } = await store.add('local', ctx, built, 'none');
  process.stdout.write(`saved ${record.id}\n`);
}
