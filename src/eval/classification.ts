/** Counts of a binary prediction against the truth, positive = negative sample. */
export interface Confusion {
  tp: number;
  fp: number;
  fn: number;
  tn: number;
  /** tp / (tp + fp); null when nothing was predicted positive. */
  precision: number | null;
  /** tp / (tp + fn); null when nothing is positive. */
  recall: number | null;
  /** Harmonic mean of the two; 0 when either is 0 or undefined. */
  f1: number;
}

export function confusion(predicted: readonly boolean[], truth: readonly boolean[]): Confusion {
  if (predicted.length !== truth.length) throw new RangeError(`confusion: ${predicted.length} predictions for ${truth.length} labels`);
  let tp = 0;
  let fp = 0;
  let fn = 0;
  let tn = 0;
  predicted.forEach((p, i) => {
    if (p && truth[i]) tp++;
    else if (p) fp++;
    else if (truth[i]) fn++;
    else tn++;
  });
  const precision = tp + fp ? tp / (tp + fp) : null;
  const recall = tp + fn ? tp / (tp + fn) : null;
  const f1 = precision && recall ? (2 * precision * recall) / (precision + recall) : 0;
  return { tp, fp, fn, tn, precision, recall, f1 };
}

/**
 * The cut on a score that best separates the labels by F1, for the rule "positive when score >= cut" (or
 * "score < cut" with `below`); cuts tried are the scores seen. Ties keep the cut that predicts fewer
 * positives. With no positive label, the cut that predicts none.
 */
export function bestCut(score: readonly number[], truth: readonly boolean[], below = false): { cut: number; f1: number } {
  const none = below ? -Infinity : Infinity;
  if (!truth.some(Boolean)) return { cut: none, f1: 0 };
  let best = { cut: none, f1: 0, predicted: 0 };
  for (const cut of [...new Set(score)]) {
    const pred = score.map((s) => (below ? s < cut : s >= cut));
    const f1 = confusion(pred, truth).f1;
    const predicted = pred.filter(Boolean).length;
    if (f1 > best.f1 + 1e-12 || (Math.abs(f1 - best.f1) <= 1e-12 && predicted < best.predicted)) best = { cut, f1, predicted };
  }
  return { cut: best.cut, f1: best.f1 };
}
