import type { ContextOptions, ContextSession } from '../engine/context-session.ts';
import type { LoadedModel } from '../engine/loaded-model.ts';
import type { Press } from '../press/registry.ts';
import { reconstructionCheck, type ReconstructionOptions } from '../engine/reconstruction-check.ts';

export interface SweepPoint {
  /** A fixed kept ratio, or 'auto' (then `chosen` is the ratio the reconstruction check picked). */
  ratio: number | 'auto';
  chosen: number;
  session: ContextSession;
  keptBytesRatio: number;
  /** Bytes the compressed cache holds (for int4 / int2: packed codes, scales, zero points and the fp32 residual). */
  bytesKept: number;
}

/**
 * Prefills and scores one context once for a method, then yields a compressed copy per ratio; every
 * ratio (and every question asked of it) reuses that one prefill and scoring.
 */
export function* sweepRatios(
  lm: LoadedModel,
  context: string,
  press: Press,
  ratios: (number | 'auto')[],
  opts: ContextOptions = {},
  auto: Omit<ReconstructionOptions, 'protection'> = {},
): Generator<SweepPoint> {
  const scored = lm.openContext(context, opts).score(press);
  for (const ratio of ratios) {
    const chosen = ratio === 'auto' ? reconstructionCheck(scored, auto).chosen : ratio;
    const { session, report } = scored.compressed(chosen);
    yield { ratio, chosen, session, keptBytesRatio: report.contextBytesFull ? report.contextBytesKept / report.contextBytesFull : 1, bytesKept: report.bytesKept };
  }
}
