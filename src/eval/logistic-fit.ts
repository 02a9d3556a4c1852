/** Standardisation of each feature column: (x - mean) / scale, scale 1 for a constant column. */
export interface Standardiser {
  mean: number[];
  scale: number[];
}

export function standardiser(x: readonly number[][]): Standardiser {
  const d = x[0]?.length ?? 0;
  const mean = Array.from({ length: d }, (_, j) => x.reduce((a, r) => a + r[j]!, 0) / x.length);
  const scale = mean.map((m, j) => {
    const sd = Math.sqrt(x.reduce((a, r) => a + (r[j]! - m) ** 2, 0) / x.length);
    return sd > 1e-12 ? sd : 1;
  });
  return { mean, scale };
}

export interface LogisticModel extends Standardiser {
  weights: number[];
  bias: number;
}

export interface LogisticFitOptions {
  /** L2 penalty on the weights (not the bias), per sample. */
  l2?: number;
  learningRate?: number;
  iterations?: number;
}

export function sigmoid(z: number): number {
  return z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z));
}

export function logisticProbability(m: LogisticModel, x: readonly number[]): number {
  let z = m.bias;
  for (let j = 0; j < m.weights.length; j++) z += (m.weights[j]! * (x[j]! - m.mean[j]!)) / m.scale[j]!;
  return sigmoid(z);
}

/**
 * Logistic regression by full-batch gradient descent on the mean log-loss plus l2/2 |w|^2, on standardised
 * features; deterministic (zero start, fixed steps). Labels are 0 or 1.
 */
export function fitLogistic(x: readonly number[][], y: readonly number[], opts: LogisticFitOptions = {}): LogisticModel {
  if (x.length === 0) throw new RangeError('logistic fit: no samples');
  if (x.length !== y.length) throw new RangeError(`logistic fit: ${x.length} feature rows but ${y.length} labels`);
  if (y.some((v) => v !== 0 && v !== 1)) throw new RangeError('logistic fit: labels must be 0 or 1');
  const l2 = opts.l2 ?? 1e-3;
  const lr = opts.learningRate ?? 0.5;
  const iterations = opts.iterations ?? 3000;
  const st = standardiser(x);
  const z = x.map((r) => r.map((v, j) => (v - st.mean[j]!) / st.scale[j]!));
  const d = st.mean.length;
  const w = new Array<number>(d).fill(0);
  let b = 0;
  const n = x.length;
  for (let it = 0; it < iterations; it++) {
    const gw = w.map((wj) => l2 * wj);
    let gb = 0;
    for (let i = 0; i < n; i++) {
      const row = z[i]!;
      let s = b;
      for (let j = 0; j < d; j++) s += w[j]! * row[j]!;
      const err = (sigmoid(s) - y[i]!) / n;
      gb += err;
      for (let j = 0; j < d; j++) gw[j] = gw[j]! + err * row[j]!;
    }
    b -= lr * gb;
    for (let j = 0; j < d; j++) w[j] = w[j]! - lr * gw[j]!;
  }
  return { ...st, weights: w, bias: b };
}
