import { readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { DecodeCompressor, needsDecodeQueries, parseDecodeCompression } from '../engine/decode-compression.ts';
import { prefill } from '../model/prefill.ts';
import { DEFAULT_MODEL_DIR, loadModel } from '../engine/loaded-model.ts';
import { selectBackend } from '../tensor/select-backend.ts';
import { median, probeBandwidth } from './machine-limits.ts';

const LENGTH_IN_BUDGETS = 4;

export interface DecodeCompressionBenchOptions {
  /** METHOD:BUDGET:EVERY of the compressed runs. */
  spec: string;
  /** Generated tokens per run; without it, LENGTH_IN_BUDGETS budgets' worth, so compression runs several times. */
  tokens?: number;
  rounds: number;
  log: (line: string) => void;
}

interface RunFigures {
  tokensPerSecondByQuarter: number[];
  /** 1000 / the median step time of each quarter: robust to a noisy machine, blind to the rare compression steps. */
  medianStepTokensPerSecondByQuarter: number[];
  /** K+V bytes the cache held after the last step. */
  finalCacheBytes: number;
  maxCacheBytes: number;
}

/**
 * Tokens/s over each quarter of a generation from the times (ms) each step ended: the intervals between
 * consecutive step ends, so the prefill and the first step are in no quarter; a trailing remainder of fewer
 * than 4 intervals is left out.
 */
export function quarterRates(stamps: readonly number[]): Pick<RunFigures, 'tokensPerSecondByQuarter' | 'medianStepTokensPerSecondByQuarter'> {
  const q = Math.floor((stamps.length - 1) / 4);
  if (q < 1) throw new RangeError(`quarterRates: ${stamps.length} step times make no quarter (at least 5 needed)`);
  return {
    tokensPerSecondByQuarter: [0, 1, 2, 3].map((i) => (q * 1000) / (stamps[(i + 1) * q]! - stamps[i * q]!)),
    medianStepTokensPerSecondByQuarter: [0, 1, 2, 3].map((i) => 1000 / median(Array.from({ length: q }, (_, k) => stamps[i * q + k + 1]! - stamps[i * q + k]!))),
  };
}

/**
 * Decode throughput of one long greedy generation on the embedded model (forward steps, no detokenization),
 * with decoding-time compression and with the full cache, in alternating rounds: tokens/s over each quarter of the generation (compression steps
 * included in their quarter's time), the median over rounds per quarter, and last-over-first quarter ratios.
 */
export async function runDecodeCompressionBench(o: DecodeCompressionBenchOptions) {
  const dc = parseDecodeCompression(o.spec);
  if (needsDecodeQueries(dc)) throw new RangeError(`--spec ${o.spec}: the benchmark times asynchronous steps, which record no queries; use a method that scores the cache (knorm, keydiff, streamingllm, random)`);
  const tokens = o.tokens ?? LENGTH_IN_BUDGETS * dc.budget;
  const lm = loadModel(DEFAULT_MODEL_DIR, { backend: selectBackend() });
  if (tokens + 64 > lm.config.maxPositionEmbeddings) throw new RangeError(`--tokens ${tokens}: the embedded model has ${lm.config.maxPositionEmbeddings} positions`);
  const prompt = lm.tokenizer.encode(lm.tokenizer.chat.render([{ role: 'user', content: 'Tell me a very long story about the code of tean.' }], { addGenerationPrompt: true }));
  const loadStart = loadavg();
  o.log('bandwidth probe (1 GiB streaming read, 3 passes)');
  const bandwidth = probeBandwidth(3);

  // The decode loop itself (greedy, no detokenization: generate() decodes the whole text every step, a cost
  // that grows with the output whatever the cache holds), with decoding-time compression after each step.
  const once = async (compressed: boolean): Promise<RunFigures> => {
    const stamps: number[] = [];
    let maxBytes = 0;
    let lastBytes = 0;
    const cache = lm.newCache();
    let logits = prefill(lm.model, cache, prompt);
    const compressor = compressed ? new DecodeCompressor(lm, cache, dc) : null;
    const vocab = lm.model.weights.lmHead.rows;
    for (let step = 0; step < tokens; step++) {
      let id = 0;
      for (let v = 1; v < vocab; v++) if (logits[v]! > logits[id]!) id = v;
      logits = (await lm.model.forwardAsync([id], cache))!;
      compressor?.afterStep();
      stamps.push(performance.now());
      lastBytes = cache.bytes();
      maxBytes = Math.max(maxBytes, lastBytes);
    }
    return { ...quarterRates(stamps), finalCacheBytes: lastBytes, maxCacheBytes: maxBytes };
  };

  o.log('warm-up run');
  await once(true);
  const runs: { compressed: RunFigures[]; full: RunFigures[] } = { compressed: [], full: [] };
  for (let r = 0; r < o.rounds; r++) {
    for (const compressed of r % 2 === 0 ? [true, false] : [false, true]) {
      const f = await once(compressed);
      (compressed ? runs.compressed : runs.full).push(f);
      o.log(
        `round ${r + 1}/${o.rounds} ${compressed ? o.spec : 'full cache'}: tokens/s by quarter ${f.tokensPerSecondByQuarter.map((x) => x.toFixed(1)).join(', ')}; ` +
          `median step ${f.medianStepTokensPerSecondByQuarter.map((x) => x.toFixed(1)).join(', ')}`,
      );
    }
  }
  const summary = (fs: RunFigures[]) => {
    const byQuarter = [0, 1, 2, 3].map((i) => r1(median(fs.map((f) => f.tokensPerSecondByQuarter[i]!))));
    return {
      tokens_per_s_by_quarter_median: byQuarter,
      last_over_first_quarter: r3(median(fs.map((f) => f.tokensPerSecondByQuarter[3]! / f.tokensPerSecondByQuarter[0]!))),
      // With the default length (LENGTH_IN_BUDGETS budgets) the first quarter is the cache growing to the budget;
      // from the second on, a compressed run holds budget..budget+every rows, so flat means this ratio near 1.
      last_over_second_quarter: r3(median(fs.map((f) => f.tokensPerSecondByQuarter[3]! / f.tokensPerSecondByQuarter[1]!))),
      median_step_tokens_per_s_by_quarter: [0, 1, 2, 3].map((i) => r1(median(fs.map((f) => f.medianStepTokensPerSecondByQuarter[i]!)))),
      median_step_last_over_first_quarter: r3(median(fs.map((f) => f.medianStepTokensPerSecondByQuarter[3]! / f.medianStepTokensPerSecondByQuarter[0]!))),
      median_step_last_over_second_quarter: r3(median(fs.map((f) => f.medianStepTokensPerSecondByQuarter[3]! / f.medianStepTokensPerSecondByQuarter[1]!))),
      final_cache_bytes: fs[0]!.finalCacheBytes,
      max_cache_bytes: Math.max(...fs.map((f) => f.maxCacheBytes)),
      rounds: fs.map((f) => f.tokensPerSecondByQuarter.map(r1)),
    };
  };
  let cpu = 'unknown';
  try {
    cpu = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpu;
  } catch {
    // not Linux
  }
  return {
    bench: 'decode-compression',
    model: 'kvlab-tiny-chat (embedded)',
    backend: lm.model.backend.name,
    prompt_tokens: prompt.length,
    generated_tokens: tokens,
    decode_compression: { method: dc.press.name, budget: dc.budget, every: dc.every },
    machine: { cpu, logical_cpus: cpus().length, bandwidth_GBs_median: r1(median(bandwidth)), loadavg_start: loadStart.map(r1), loadavg_end: loadavg().map(r1) },
    compressed: summary(runs.compressed),
    full: summary(runs.full),
    compressed_over_full_last_quarter: r3(median(runs.compressed.map((c, i) => c.tokensPerSecondByQuarter[3]! / runs.full[i]!.tokensPerSecondByQuarter[3]!))),
  };
}

function r1(x: number): number {
  return Math.round(x * 10) / 10;
}

function r3(x: number): number {
  return Math.round(x * 1000) / 1000;
}
