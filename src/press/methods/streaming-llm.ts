import { perHead } from '../per-head.ts';
import type { Scorer } from '../types.ts';

/** StreamingLLM: attention sinks (the first nSink positions of the sequence) and the most recent tokens. */
export function streamingLlmScorer(nSink = 4): Scorer {
  return {
    summary: 'StreamingLLM: attention sinks + the most recent tokens',
    options: { nSink },
    score: (ctx) => perHead(ctx, ({ positions }) => Array.from(positions, (p) => (p < nSink ? Infinity : p))),
  };
}
