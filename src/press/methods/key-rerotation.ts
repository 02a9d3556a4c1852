import type { KvCache } from '../../cache/kv-cache.ts';

/**
 * KeyRerotation (kvpress KeyRerotationPress; StreamingLLM, FINCH): after eviction, close the position gaps by
 * re-rotating every kept key with RoPE to a new, contiguous position: a key stored at position p (rotated by
 * p w) and moved to p' is rotated by (p' - p) w, which is exact for RoPE. Heads may keep different numbers of
 * rows (ragged budgets), so the rows after the template prefix are packed against the end: with N' = the
 * longest head's row count, a head of n rows puts them at N' - (n - i) for row i >= prefixRows, and new tokens
 * continue at N'. Uniform budgets close every gap; a head that kept fewer rows keeps one gap, after the
 * prefix. Works on any method (the `rerotate:` prefix); positions of the prefix never move.
 */
export function rerotateKeys(cache: KvCache, invFreq: Float32Array, prefixRows: number): void {
  const d = cache.headDim;
  let longest = 0;
  cache.forEachHead((hs) => (longest = Math.max(longest, hs.len)));
  cache.forEachHead((hs, l, h) => {
    const n = hs.len;
    const pos = Int32Array.from(hs.pos.subarray(0, n));
    const keys = hs.keys(0, n).slice();
    for (let i = prefixRows; i < n; i++) {
      const to = longest - (n - i);
      rotateRow(keys.subarray(i * d, (i + 1) * d), to - pos[i]!, invFreq);
      pos[i] = to;
    }
    cache.loadHead(l, h, pos, keys, hs.values(0, n).slice());
  });
  cache.nextPos = longest;
}

/** Rotates one key (rotate_half layout) by delta positions, in place. */
export function rotateRow(k: Float32Array, delta: number, invFreq: Float32Array): void {
  if (delta === 0) return;
  const half = k.length / 2;
  for (let f = 0; f < half; f++) {
    const angle = delta * invFreq[f]!;
    const c = Math.cos(angle);
    const s = Math.sin(angle);
    const a = k[f]!;
    const b = k[f + half]!;
    k[f] = a * c - b * s;
    k[f + half] = b * c + a * s;
  }
}
