import type { ContextOptions, ContextSession } from '../engine/context-session.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import type { Press } from '../press/registry.ts';

export interface SweepPoint {
  ratio: number;
  session: ContextSession;
  keptBytesRatio: number;
  /** Bytes the compressed cache holds (for int4 / int2: packed codes, scales, zero points and the fp32 residual). */
  bytesKept: number;
}

/**
 * Prefills and scores one context once for a method, then yields a compressed copy per ratio; every
 * ratio (and every question asked of it) reuses that one prefill and scoring.
 */
export function* sweepRatios(lm: LoadedModel, context: string, press: Press, ratios: number[], opts: ContextOptions = {}): Generator<SweepPoint> {
  const scored = lm.openContext(context, opts).score(press);
  for (const ratio of ratios) {
    const { session, report } = scored.compressed(ratio);
    yield { ratio, session, keptBytesRatio: report.contextBytesFull ? report.contextBytesKept / report.contextBytesFull : 1, bytesKept: report.bytesKept };
  }
}
