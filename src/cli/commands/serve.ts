import type { Command } from 'commander';
import { defaultStoreDir, DEFAULT_BODY_LIMIT, DEFAULT_MAX_TOKENS } from '../../server/defaults.ts';
import { parseRedisUrl } from '../../queue/redis-connection.ts';
import { intOption, modelLoadSpec, modelOptions, openModel } from '../common.ts';
import { predictorOption } from '../compression-options.ts';

/** "512MiB", "2GiB", "1e9": bytes. */
function bytesOption(value: string): number {
  const m = /^(\d+(?:\.\d+)?(?:e\d+)?)\s*(k|ki|kib|kb|m|mi|mib|mb|g|gi|gib|gb)?$/i.exec(value.trim());
  if (!m) throw new Error(`expected a size like 512MiB or 2GiB, got "${value}"`);
  const unit = (m[2] ?? '').toLowerCase();
  const scale = unit.startsWith('k') ? 1024 : unit.startsWith('m') ? 1024 ** 2 : unit.startsWith('g') ? 1024 ** 3 : 1;
  return Math.floor(Number(m[1]) * scale);
}

export function registerServe(program: Command): void {
  modelOptions(program.command('serve').description('OpenAI-compatible HTTP server; long contexts are compressed once (POST /v1/contexts), stored and reused'))
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <n>', 'port (0 picks a free one)', intOption('--port'), 8080)
    .option('--store <dir|url>', `folder of stored contexts (default ${defaultStoreDir()}), or redis://HOST:PORT/N to share them with every server on that Redis`)
    .option('--no-store', 'keep contexts in memory only')
    .option('--api-key <key>', 'require Authorization: Bearer <key> on every route but /health (repeatable; or KVLAB_API_KEY)', (v: string, p: string[] = []) => [...p, v])
    .option('--kv-memory <size>', 'byte budget of the KV memory pool every sequence allocates from (e.g. 4GiB); default a quarter of RAM', bytesOption)
    .option('--max-batch <n>', 'sequences decoded together per step', intOption('--max-batch', 1), 16)
    .option('--max-queue <n>', 'sequences that may wait; more get 429', intOption('--max-queue'), 64)
    .option('--max-body <size>', 'largest request body', bytesOption, DEFAULT_BODY_LIMIT)
    .option('--auto-predictor <file>', 'ratio "auto" chooses by this negative-sample predictor (written by kvlab eval router) unless a request sets auto.rule "threshold"', predictorOption)
    .option('--no-context-thread', 'compress and inspect contexts on the event loop (no second copy of the weights, but every stream pauses meanwhile)')
    .option('--default-max-tokens <n>', 'max_tokens when a request gives none', intOption('--default-max-tokens', 1), DEFAULT_MAX_TOKENS)
    .action(async (o) => {
      const redisStore = typeof o.store === 'string' && o.store.startsWith('redis://') ? o.store : undefined;
      if (redisStore) parseRedisUrl(redisStore, '--store');
      const keys: string[] = [...(o.apiKey ?? []), ...(process.env.KVLAB_API_KEY ? [process.env.KVLAB_API_KEY] : [])];
      // Loaded here, not at start-up: the HTTP stack is the largest import of the CLI.
      const { startServer } = await import('../../server/serve.ts');
      const running = await startServer({
        load: () => openModel(o.model, o.weights, o.kvDtype, o),
        host: o.host,
        port: o.port,
        storeDir: o.store === false ? null : typeof o.store === 'string' ? o.store : defaultStoreDir(),
        redisStore,
        apiKeys: keys,
        kvMemoryBytes: o.kvMemory,
        maxQueue: o.maxQueue,
        maxBatch: o.maxBatch,
        bodyLimitBytes: o.maxBody,
        defaultMaxTokens: o.defaultMaxTokens,
        autoPredictor: o.autoPredictor,
        ...(o.contextThread ? { contextThread: modelLoadSpec(o) } : {}),
      });
      process.stdout.write(`listening on ${running.url}\n`);
      const stop = (signal: string) => {
        process.stderr.write(`kvlab serve: ${signal}: draining in-flight requests\n`);
        running.shutdown().then(
          () => process.exit(0),
          (e: unknown) => {
            process.stderr.write(`kvlab serve: shutdown failed: ${(e as Error).message}\n`);
            process.exit(1);
          },
        );
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
      // A model or store that cannot be opened ends the command instead of leaving a server that answers 503.
      await running.ready.catch(async (e: unknown) => {
        await running.shutdown();
        throw e;
      });
    });
}
