import { InvalidArgumentError, type Command } from 'commander';
import { parseDecodeCompression, type DecodeCompression } from '../engine/decode-compression.ts';
import { parseProtectionChoice, type ProtectionChoice } from '../engine/default-protection.ts';
import { loadPredictor, type NegativePredictor } from '../engine/negative-predictor.ts';
import type { ReconstructionCheck, ReconstructionOptions } from '../engine/reconstruction-check.ts';
import { parsePromptCompression, type PromptCompression } from '../engine/system-prompt-compression.ts';
import { numberOption, ratioList } from './common.ts';

/** Runs a parser at option time so bad input fails before the model loads, as commander's own error. */
function atOptionTime<T>(parse: (v: string) => T): (v: string) => T {
  return (v) => {
    try {
      return parse(v);
    } catch (e) {
      throw new InvalidArgumentError((e as Error).message);
    }
  };
}

export const PROTECT_HELP =
  'default (template tokens inside the compressed span and a detected "never reveal" sentence kept, inside the budget), none, whitelist:NAME[,NAME], fair[:lambda] or both';

export const protectChoiceOption = atOptionTime<ProtectionChoice>(parseProtectionChoice);
export const decodeCompressOption = atOptionTime<DecodeCompression>(parseDecodeCompression);
export const promptCompressOption = atOptionTime<PromptCompression>(parsePromptCompression);
export const predictorOption = atOptionTime<NegativePredictor>(loadPredictor);

/** --ratio: a kept fraction in [0, 1], or auto. */
export function ratioOrAutoOption(value: string): number | 'auto' {
  return value.trim() === 'auto' ? 'auto' : numberOption('--ratio', 0, 1)(value);
}

/** --auto-threshold, --auto-mode, --auto-candidates, --auto-predictor, --auto-max-probability (what `--ratio auto` reads). */
export function autoRatioOptions(cmd: Command): Command {
  return cmd
    .option('--auto-threshold <t>', 'with --ratio auto: accuracy a candidate must reach (relative to the full cache unless --auto-mode absolute); default 0.9', numberOption('--auto-threshold', 0, 1))
    .option('--auto-mode <m>', 'with --ratio auto: relative (to the full cache, default) or absolute', (v: string) => {
      if (v !== 'relative' && v !== 'absolute') throw new InvalidArgumentError(`--auto-mode must be relative or absolute, got "${v}"`);
      return v;
    })
    .option('--auto-candidates <list>', 'with --ratio auto: candidate ratios, comma-separated (default 0.1,0.2,...,1)', ratioList)
    .option('--auto-predictor <file>', 'with --ratio auto: choose the smallest candidate a negative-sample predictor (written by kvlab eval router) calls safe, instead of the reconstruction threshold', predictorOption)
    .option('--auto-max-probability <p>', "with --auto-predictor: a candidate is safe below this predicted probability of being negative (default: the predictor's own)", numberOption('--auto-max-probability', 0, 1));
}

export function autoOptionsOf(o: Record<string, any>): Omit<ReconstructionOptions, 'protection'> {
  return {
    ...(o.autoThreshold !== undefined ? { threshold: o.autoThreshold as number } : {}),
    ...(o.autoMode !== undefined ? { mode: o.autoMode as 'relative' | 'absolute' } : {}),
    ...(o.autoCandidates !== undefined ? { candidates: o.autoCandidates as number[] } : {}),
    ...(o.autoPredictor !== undefined ? { predictor: o.autoPredictor as NegativePredictor } : {}),
    ...(o.autoMaxProbability !== undefined ? { maxProbability: o.autoMaxProbability as number } : {}),
  };
}

/** Refuses --auto-* options without --ratio auto (they would do nothing). */
export function checkAutoOptions(o: Record<string, any>, ratio: number | 'auto'): void {
  if (ratio !== 'auto' && (o.autoThreshold !== undefined || o.autoMode !== undefined || o.autoCandidates !== undefined || o.autoPredictor !== undefined || o.autoMaxProbability !== undefined)) {
    throw new InvalidArgumentError('--auto-threshold, --auto-mode, --auto-candidates, --auto-predictor and --auto-max-probability go with --ratio auto');
  }
  if (o.autoMaxProbability !== undefined && o.autoPredictor === undefined) throw new InvalidArgumentError('--auto-max-probability goes with --auto-predictor');
}

/** The reconstruction check as JSON (rounded accuracies). */
export function autoJson(auto: ReconstructionCheck) {
  const r = (x: number) => Math.round(x * 1e4) / 1e4;
  return {
    chosen: auto.chosen,
    rule: auto.rule,
    threshold: auto.threshold,
    mode: auto.mode,
    ...(auto.rule === 'predictor' ? { max_probability: auto.maxProbability } : {}),
    full_accuracy: r(auto.fullAccuracy),
    candidates: auto.candidates.map((c) => ({ ratio: c.ratio, accuracy: r(c.accuracy), ...(c.negativeProbability !== undefined ? { negative_probability: r(c.negativeProbability) } : {}) })),
  };
}

/** One line: each candidate's accuracy and the choice. */
export function autoLine(auto: ReconstructionCheck): string {
  const each = auto.candidates.map((c) => `${c.ratio}: ${(c.accuracy * 100).toFixed(1)}%`).join(', ');
  if (auto.rule === 'predictor') {
    const probs = auto.candidates.map((c) => `${c.ratio}: ${c.negativeProbability!.toFixed(3)}`).join(', ');
    return `ratio auto: chose ${auto.chosen} (predicted probability of a negative sample ${probs}; safe below ${auto.maxProbability}; reconstruction accuracy ${each})\n`;
  }
  return `ratio auto: chose ${auto.chosen} (reconstruction accuracy ${each}; threshold ${auto.threshold}${auto.mode === 'relative' ? ' of the full cache' : ''})\n`;
}
