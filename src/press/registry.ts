import { adaKvBudget, globalBudget, headsWithWindowBudget, pyramidBudget, uniformBudget } from './budgets.ts';
import { blockBudget, blockKeyDiffScorer } from './methods/block.ts';
import { CAM_DEFAULTS, camScorer, type CamOptions } from './methods/cam.ts';
import { chunkKvScorer } from './methods/chunkkv.ts';
import { CHUNKED_DEFAULT, chunkedBudget, chunkedScorer } from './methods/chunked.ts';
import { criticalAdaKvBudget, criticalBudget, criticalScorer } from './methods/criticalkv.ts';
import { compactorBudget, compactorScorer } from './methods/compactor.ts';
import { curScorer } from './methods/cur.ts';
import { DUO_DEFAULTS, duoAttentionScorer } from './methods/duo-attention.ts';
import { expectedAttentionScorer } from './methods/expected-attention.ts';
import { finchScorer } from './methods/finch.ts';
import { lagKvScorer } from './methods/lagkv.ts';
import { qFilterScorer } from './methods/qfilter.ts';
import { simLayerKvScorer } from './methods/simlayerkv.ts';
import { keyDiffScorer } from './methods/keydiff.ts';
import { keyNormScorer } from './methods/key-norm.ts';
import { kvzipHeadScorer } from './methods/kvzip-head.ts';
import { kvzipScorer } from './methods/kvzip.ts';
import { observedAttentionScorer } from './methods/observed-attention.ts';
import { randomScorer } from './methods/random.ts';
import { snapKvScorer } from './methods/snapkv.ts';
import { streamingLlmScorer } from './methods/streaming-llm.ts';
import { tovaScorer } from './methods/tova.ts';
import { checkKeyChannelRatio, everyRowBudget, noEvictionScorer, THINK_DEFAULTS, thinkScorer, type ThinkOptions } from './methods/think.ts';
import type { BudgetPolicy, Scorer } from './types.ts';
import { MethodNameError } from '../tensor/kvlab-error.ts';

/** A compression method: how positions are scored and how the budget is shared out. */
export interface Press {
  readonly name: string;
  /** One line: what the scores favour, the scorer's options and the budget policy. */
  readonly describe: string;
  readonly scorer: Scorer;
  readonly budget: BudgetPolicy;
  /** KeyRerotation: after eviction, kept keys are re-rotated to contiguous positions (methods/key-rerotation.ts). */
  readonly rerotate?: boolean;
  /** CaM: evicted values are merged into the kept rows that follow them before they are dropped (methods/cam.ts). */
  readonly merge?: CamOptions;
  /** ThinK: after eviction, each head's key channels are pruned (methods/think.ts). */
  readonly keyChannels?: ThinkOptions;
}

/** What a press does around the selection itself. */
export interface PressOptions {
  rerotate?: boolean;
  merge?: CamOptions;
  keyChannels?: ThinkOptions;
}

/** Every method by name. A new method is one file in methods/ and one line here. */
const methods: Record<string, [Scorer, BudgetPolicy, PressOptions?]> = {
  kvzip: [kvzipScorer(), globalBudget],
  'kvzip-uniform': [kvzipScorer(), uniformBudget],
  'kvzip+': [kvzipScorer({ normalized: true }), globalBudget],
  'kvzip-head': [kvzipHeadScorer(), headsWithWindowBudget(DUO_DEFAULTS.sink, DUO_DEFAULTS.recent)],
  streamingllm: [streamingLlmScorer(), uniformBudget],
  snapkv: [snapKvScorer(), uniformBudget],
  pyramidkv: [snapKvScorer(), pyramidBudget(20)],
  h2o: [observedAttentionScorer(), uniformBudget],
  tova: [tovaScorer(), uniformBudget],
  knorm: [keyNormScorer(), uniformBudget],
  keydiff: [keyDiffScorer(), uniformBudget],
  'expected-attention': [expectedAttentionScorer(), uniformBudget],
  random: [randomScorer(0), uniformBudget],
  chunkkv: [chunkKvScorer(snapKvScorer()), uniformBudget],
  lagkv: [lagKvScorer(), uniformBudget],
  criticalkv: [criticalScorer(snapKvScorer()), criticalBudget()],
  criticaladakv: [criticalScorer(snapKvScorer()), criticalAdaKvBudget()],
  simlayerkv: [simLayerKvScorer(), globalBudget],
  cur: [curScorer(), uniformBudget],
  qfilter: [qFilterScorer(), uniformBudget],
  'duo-attention': [duoAttentionScorer(), headsWithWindowBudget(DUO_DEFAULTS.sink, DUO_DEFAULTS.recent)],
  compactor: [compactorScorer(), compactorBudget()],
  block: [blockKeyDiffScorer(), blockBudget()],
  finch: [finchScorer(), uniformBudget],
  cam: [camScorer(snapKvScorer()), uniformBudget, { merge: CAM_DEFAULTS }],
};

const ADAKV_ALPHA = 0.2;

/** `think`, `think0.25`: ThinK with an optional fraction of key channels pruned. */
const THINK_PREFIX = /^think((?:0|1)?\.\d+|0|1)?$/;

export function press(name: string, scorer: Scorer, budget: BudgetPolicy, opts: PressOptions = {}): Press {
  return {
    name,
    scorer,
    budget,
    describe: describePress(scorer, budget, opts),
    ...(opts.rerotate ? { rerotate: true } : {}),
    ...(opts.merge ? { merge: opts.merge } : {}),
    ...(opts.keyChannels ? { keyChannels: opts.keyChannels } : {}),
  };
}

/** "summary (option value, ...); budget NAME[; values merged][; keys re-rotated]", from the parts themselves. */
export function describePress(scorer: Scorer, budget: BudgetPolicy, opts: PressOptions = {}): string {
  const options = Object.entries(scorer.options ?? {}).map(([k, v]) => `${k} ${typeof v === 'string' ? JSON.stringify(v) : v}`);
  const merge = opts.merge ? `; evicted values merged into the next ${opts.merge.mergeBudget ?? CAM_DEFAULTS.mergeBudget} kept rows (seed ${opts.merge.seed ?? CAM_DEFAULTS.seed})` : '';
  const think = opts.keyChannels ? `; then ThinK prunes ${opts.keyChannels.keyChannelRatio} of each head's key channels (window ${opts.keyChannels.window})` : '';
  return `${scorer.summary}${options.length ? ` (${options.join(', ')})` : ''}; budget ${budget.name}${merge}${opts.rerotate ? '; keys re-rotated' : ''}${think}`;
}

/**
 * Wrappers of any method, written `PREFIX:<method>` and nested freely (e.g. `rerotate:adakv:snapkv`):
 * each turns the inner method's scorer and budget into new ones. `chunkedN:` sets the chunk length.
 */
const wrappers: { prefix: RegExp; usage: string; wrap(inner: Press, arg?: number): [Scorer, BudgetPolicy, PressOptions?] }[] = [
  { prefix: /^adakv$/, usage: 'adakv:<method>', wrap: (p) => [p.scorer, adaKvBudget(ADAKV_ALPHA)] },
  { prefix: /^chunked(\d+)?$/, usage: 'chunked[N]:<method>', wrap: (p, n = CHUNKED_DEFAULT) => [chunkedScorer(p.scorer, n), chunkedBudget(p.budget, n)] },
  { prefix: /^chunkkv$/, usage: 'chunkkv:<method>', wrap: (p) => [chunkKvScorer(p.scorer), uniformBudget] },
  { prefix: /^critical$/, usage: 'critical:<method>', wrap: (p) => [criticalScorer(p.scorer), criticalBudget()] },
  { prefix: /^rerotate$/, usage: 'rerotate:<method>', wrap: (p) => [p.scorer, p.budget, { rerotate: true }] },
  { prefix: /^cam$/, usage: 'cam:<method>', wrap: (p) => [camScorer(p.scorer), p.budget, { merge: CAM_DEFAULTS }] },
  { prefix: THINK_PREFIX, usage: 'think[R]:<method>', wrap: (p, r = THINK_DEFAULTS.keyChannelRatio) => [thinkScorer(p.scorer, THINK_DEFAULTS.window), p.budget, { keyChannels: { ...THINK_DEFAULTS, keyChannelRatio: checkKeyChannelRatio(r) } }] },
];

function wrapped(name: string): Press | undefined {
  const colon = name.indexOf(':');
  if (colon < 0) return undefined;
  const head = name.slice(0, colon);
  for (const w of wrappers) {
    const m = w.prefix.exec(head);
    if (!m) continue;
    const arg = m[1] === undefined ? undefined : Number(m[1]);
    const inner = getPress(name.slice(colon + 1));
    const [scorer, budget, opts = {}] = w.wrap(inner, arg);
    return press(name, scorer, budget, { rerotate: opts.rerotate ?? inner.rerotate, merge: opts.merge ?? inner.merge, keyChannels: opts.keyChannels ?? inner.keyChannels });
  }
  return undefined;
}

/** `think[R]` alone: every row kept, key channels pruned. */
function thinkAlone(name: string): Press | undefined {
  const m = THINK_PREFIX.exec(name);
  if (!m) return undefined;
  const keyChannelRatio = checkKeyChannelRatio(m[1] === undefined ? THINK_DEFAULTS.keyChannelRatio : Number(m[1]));
  return press(name, thinkScorer(noEvictionScorer, THINK_DEFAULTS.window), everyRowBudget, { keyChannels: { ...THINK_DEFAULTS, keyChannelRatio } });
}

export function methodNames(): string[] {
  return Object.keys(methods);
}

const WRAPPER_LINES: Record<string, string> = {
  'adakv:<method>': `any method's scores; budget ${adaKvBudget(ADAKV_ALPHA).name}`,
  'chunked[N]:<method>': `any method, each chunk of N rows (default ${CHUNKED_DEFAULT}) scored and budgeted on its own`,
  'chunkkv:<method>': "any method's scores, kept in whole chunks (ChunkKV); budget uniform",
  'critical:<method>': "any method's scores reweighted by ||W_O v||_1 in two stages (CriticalKV)",
  'rerotate:<method>': 'any method; kept keys re-rotated to close the position gaps (KeyRerotation)',
  'cam:<method>': 'any method; evicted values merged into the kept rows after them (CaM)',
  'think[R]:<method>': `any method, then ThinK prunes a fraction R (default ${THINK_DEFAULTS.keyChannelRatio}) of each head's key channels; think[R] alone keeps every row (ratio 1)`,
};

/** Every method's describe line, and the wrappers'. */
export function describeMethods(): { name: string; describe: string }[] {
  return [...methodNames().map((name) => ({ name, describe: getPress(name).describe })), ...Object.entries(WRAPPER_LINES).map(([name, describe]) => ({ name, describe }))];
}

/** Resolves a method name, with any wrappers (`adakv:`, `chunked[N]:`, `chunkkv:`, `critical:`, `rerotate:`, `cam:`, `think[R]:`). */
export function getPress(name: string): Press {
  const w = wrapped(name);
  if (w) return w;
  const m = methods[name];
  const t = m ? undefined : thinkAlone(name);
  if (t) return t;
  if (!m) throw new MethodNameError(`unknown method "${name}"; known: ${[...methodNames(), ...wrappers.map((x) => x.usage)].join(', ')}`);
  return press(name, ...m);
}

/**
 * Adds a method under a new name (from user code: a scorer and a budget policy, e.g. uniformBudget), to be
 * used by name everywhere a built-in one is. Names are lower-case words joined by "-", "_", "." or "+"; a
 * taken name or a wrapper prefix (a name with ":") is refused.
 */
export function registerMethod(name: string, scorer: Scorer, budget: BudgetPolicy): void {
  if (!/^[a-z0-9][a-z0-9._+-]*$/.test(name)) throw new MethodNameError(`method name "${name}" must be lower-case letters, digits, ".", "_", "+" or "-"`);
  if (name in methods) throw new MethodNameError(`method "${name}" is already registered`);
  if (typeof scorer?.score !== 'function' || typeof scorer.summary !== 'string') throw new TypeError(`method "${name}": the scorer needs a summary string and a score(ctx) function`);
  if (typeof budget?.select !== 'function' || typeof budget.expectedKept !== 'function') throw new TypeError(`method "${name}": the budget needs select() and expectedKept()`);
  methods[name] = [scorer, budget];
}
