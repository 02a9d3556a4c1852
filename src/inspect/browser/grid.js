// @ts-check
/**
 * Score grids travel inside the page as base64 of little-endian float32 values, [layer][kvHead][position]
 * in row-major order: exact (NaN and the infinities a scorer may give survive) and compact.
 */

/**
 * @param {string} base64 @param {number} layers @param {number} heads @param {number} length
 * @returns {Float32Array[][]}
 */
export function decodeGrid(base64, layers, heads, length) {
  const bin = atob(base64);
  if (bin.length !== layers * heads * length * 4) {
    throw new Error(`score grid holds ${bin.length} bytes, expected ${layers * heads * length * 4} (${layers} x ${heads} x ${length} float32)`);
  }
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const all = new Float32Array(bytes.buffer);
  return Array.from({ length: layers }, (_, l) =>
    Array.from({ length: heads }, (_, h) => all.subarray((l * heads + h) * length, (l * heads + h + 1) * length)),
  );
}
