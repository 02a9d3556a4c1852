/**
 * Exact top-k with the project's tie rule: higher score first, then lower position (index) first.
 * NaN scores rank last. Returns the chosen indices sorted ascending.
 */
export function topKIndices(scores: ArrayLike<number>, k: number): Int32Array {
  const n = scores.length;
  const take = Math.max(0, Math.min(n, Math.floor(k)));
  if (take === n) return Int32Array.from({ length: n }, (_, i) => i);
  if (take === 0) return new Int32Array(0);
  const order = Int32Array.from({ length: n }, (_, i) => i);
  order.sort((a, b) => compareScores(scores[a]!, scores[b]!) || a - b);
  return order.subarray(0, take).sort();
}

/** Negative when a ranks before b. */
export function compareScores(a: number, b: number): number {
  const an = Number.isNaN(a);
  const bn = Number.isNaN(b);
  if (an || bn) return an === bn ? 0 : an ? 1 : -1;
  return a > b ? -1 : a < b ? 1 : 0;
}
