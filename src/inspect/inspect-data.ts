import type { Scores } from '../press/types.ts';
import type { BudgetSpec, NamedRange, Protection } from './browser/select.js';

export const INSPECT_FORMAT = 'kvlab-inspect/1';

/** One method's stored scores and what the engine answered with its compressed cache. */
export interface InspectMethod {
  name: string;
  describe: string;
  budget: BudgetSpec;
  /** Scores over the compressible span, encodeGrid() of [layer][kvHead][position]. */
  scores: string;
  /** Span-local scores (each range scored on its own), present when fair eviction is on. */
  localScores?: string;
  answers: InspectAnswer[];
}

export interface InspectAnswer {
  ratio: number;
  question: string;
  answer: string;
}

/** Everything the inspector page shows; the page computes keep sets from it at any ratio. */
export interface InspectData {
  format: typeof INSPECT_FORMAT;
  model: string;
  layers: number;
  kvHeads: number;
  /** The text of every prompt token (template prefix, the compressible span, any template after it). */
  tokens: string[];
  /** Absolute rows of the compressible span; rows outside it are never evicted. */
  context: { start: number; end: number };
  /** Named spans tiling all tokens (absolute rows), for the boundaries drawn in the text. */
  spans: NamedRange[];
  /** Named ranges tiling the compressible span (span-relative): protection and per-span keep rates use them. */
  ranges: NamedRange[];
  protection?: Protection;
  /** How the protection reads on the command line (`none`, `whitelist:defense+fair`, ...). */
  protectLabel: string;
  /** The ratio the page opens at. */
  ratio: number;
  /** Ratios the engine answered the questions at. */
  answerRatios: number[];
  questions: string[];
  methods: InspectMethod[];
}

/** Scores as base64 of little-endian float32, [layer][kvHead][position] row-major (exact, NaN included). */
export function encodeGrid(scores: Scores): string {
  const L = scores.length;
  const H = scores[0]?.length ?? 0;
  const T = scores[0]?.[0]?.length ?? 0;
  const all = new Float32Array(L * H * T);
  scores.forEach((layer, l) =>
    layer.forEach((s, h) => {
      if (s.length !== T) throw new Error(`scores of layer ${l} head ${h} have ${s.length} positions, expected ${T}`);
      all.set(s, (l * H + h) * T);
    }),
  );
  const bytes = new Uint8Array(all.buffer);
  if (new Uint8Array(new Float32Array([1]).buffer)[3] !== 0x3f) throw new Error('the inspector encodes scores little-endian only');
  return Buffer.from(bytes).toString('base64');
}
