/**
 * Exact top-k with the project's tie rule: higher score first, then lower position (index) first.
 * NaN scores rank last. Returns the chosen indices sorted ascending.
 *
 * The k-th best score is found by a native numeric sort of a copy (no comparator calls); every score above it is
 * taken, then the lowest positions among those equal to it, so the result needs no second sort.
 */
export function topKIndices(scores: ArrayLike<number>, k: number): Int32Array {
  const n = scores.length;
  const take = Math.max(0, Math.min(n, Math.floor(k)));
  if (take === n) return Int32Array.from({ length: n }, (_, i) => i);
  if (take === 0) return new Int32Array(0);
  const ranked = new Float64Array(n);
  let m = 0;
  for (let i = 0; i < n; i++) if (!Number.isNaN(scores[i]!)) ranked[m++] = scores[i]!;
  const out = new Int32Array(take);
  let at = 0;
  if (take > m) {
    // Every number, then the first NaNs.
    let nans = take - m;
    for (let i = 0; i < n; i++) if (!Number.isNaN(scores[i]!) || nans-- > 0) out[at++] = i;
    return out;
  }
  const sorted = ranked.subarray(0, m).sort();
  const kth = sorted[m - take]!;
  let above = 0;
  for (let j = m - take + 1; j < m; j++) if (sorted[j]! > kth) above++;
  let equalLeft = take - above;
  for (let i = 0; i < n && at < take; i++) {
    const s = scores[i]!;
    if (s > kth || (s === kth && equalLeft-- > 0)) out[at++] = i;
  }
  return out;
}

/** Negative when a ranks before b. */
export function compareScores(a: number, b: number): number {
  const an = Number.isNaN(a);
  const bn = Number.isNaN(b);
  if (an || bn) return an === bn ? 0 : an ? 1 : -1;
  return a > b ? -1 : a < b ? 1 : 0;
}
