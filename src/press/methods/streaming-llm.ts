import type { Scorer } from '../types.ts';

/** StreamingLLM: attention sinks (the first nSink positions of the sequence) and the most recent tokens. */
export function streamingLlmScorer(nSink = 4): Scorer {
  return {
    name: 'streamingllm',
    score({ lm, span }) {
      const T = span.end - span.start;
      const s = Float32Array.from({ length: T }, (_, j) => (span.start + j < nSink ? Infinity : span.start + j));
      return Array.from({ length: lm.config.numLayers }, () => Array.from({ length: lm.config.numKvHeads }, () => s.slice()));
    },
  };
}
