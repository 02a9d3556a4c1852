/**
 * The worker thread of `kvlab worker`: loads the model once and runs the sweep units posted to it (any kind). Jobs run here,
 * off the main thread, so a long synchronous prefill never stops the main thread from renewing the job's
 * lock (a lock that lapses hands a live job to another worker).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { loadModelFromSpec, type ModelLoadSpec } from '../engine/model-load-spec.ts';
import { MethodNameError } from '../tensor/kvlab-error.ts';
import { runSweepJob } from './run-sweep-job.ts';
import { modelTagOf } from './sweep-jobs.ts';
import type { ThreadReply, ThreadRequest } from './sweep-thread-protocol.ts';

const port = parentPort;
if (!port) throw new Error('sweep-thread.ts runs as a worker thread of `kvlab worker`');
const spec = workerData as ModelLoadSpec;

try {
  const lm = loadModelFromSpec(spec);
  port.postMessage({ type: 'ready', tag: modelTagOf(lm), dir: lm.dir } satisfies ThreadReply);
  port.on('message', (req: ThreadRequest) => {
    void (async () => {
      try {
        const unit = await runSweepJob(lm, req.data);
        port.postMessage({ type: 'done', id: req.id, unit } satisfies ThreadReply);
      } catch (e) {
        port.postMessage({ type: 'error', id: req.id, message: (e as Error).message, unrecoverable: e instanceof MethodNameError } satisfies ThreadReply);
      }
    })();
  });
} catch (e) {
  port.postMessage({ type: 'load-error', message: (e as Error).message } satisfies ThreadReply);
}
