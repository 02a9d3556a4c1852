import { PY_NON_SPACE, PY_SPACE, pySplit } from './py-text.ts';

/**
 * Approximations of the two NLTK tokenizers IFEval counts with, for length_constraints:number_sentences
 * and change_case:capital_word_frequency. Both are APPROXIMATE: NLTK's punkt model (english.pickle) holds a
 * learned abbreviation list, collocations, sentence starters and per-word case statistics that are not
 * available here.
 *
 * Sentence count (nltk.sent_tokenize / punkt), as reproduced:
 * - a candidate boundary is a run of . ? ! followed by whitespace and another token, or by one of
 *   ? ! ) " ; } ] * : @ ' ( { [ (punkt's "non-word" characters); newlines alone never split;
 * - a run holding ? or ! always splits;
 * - a run of two or more dots (ellipsis) splits only before a token starting with an upper-case letter;
 * - a single period splits unless the word before it is a known abbreviation (small fixed list below,
 *   standing in for punkt's learned one), a single-letter initial ("J."), or a number followed by a
 *   token starting with a lower-case letter (punkt's orthographic heuristic, approximated);
 * - like punkt's boundary realignment, closing quotes/brackets after a boundary stay with the sentence before.
 * Known differences: punkt may also split after an abbreviation or initial before a word it has seen mostly
 * capitalised at sentence starts, and may keep a number with a following capitalised word.
 *
 * Word tokens (nltk.word_tokenize, Treebank rules), as reproduced for counting all-capital words: quotes,
 * brackets, ? ! ; @ # $ % & * and -- and ... are split off, commas and colons unless a digit follows, clitics
 * 's 'm 'd 'll 're 've n't and the contractions cannot gonna gotta wanna gimme lemme are split. Periods stay
 * attached (they do not change whether a token is all capitals).
 */

/** punkt's "non-word" characters: one of them right after . ? ! makes a candidate boundary. */
const NON_WORD_CLASS = `[?!)";}\\]*:@'({[]`;
const NON_WORD_SET = new Set([...'?!)";}]*:@\'({[']);
/** Characters punkt does not let a word start with (they become one-character tokens). */
const NOT_WORD_START = new Set([...'(\"`{[:;&#*@)}]-,']);

/** Stand-in for punkt's learned English abbreviations (lower case, without the final period). */
const ABBREVIATIONS = new Set([
  'mr', 'mrs', 'ms', 'dr', 'prof', 'st', 'jr', 'sr', 'rev', 'gen', 'gov', 'sen', 'rep', 'col', 'lt', 'capt', 'sgt',
  'inc', 'corp', 'co', 'ltd', 'vs', 'etc', 'e.g', 'i.e', 'cf', 'al', 'approx', 'dept', 'est', 'fig', 'no', 'vol',
  'jan', 'feb', 'mar', 'apr', 'jun', 'jul', 'aug', 'sep', 'sept', 'oct', 'nov', 'dec',
  'mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun',
  'u.s', 'u.k', 'u.n', 'u.s.a', 'a.m', 'p.m', 'ph.d', 'b.a', 'm.a', 'b.s', 'd.c', 'n.y', 'l.a',
  'ave', 'blvd', 'mt', 'ft',
]);

const NUMBER = /^-?[.,]?\d[\d,.-]*\.?$/;
const INITIAL = /^\p{L}\.$/u;
const CANDIDATE = new RegExp(`[.?!]+(?=${NON_WORD_CLASS}|${PY_SPACE}+${PY_NON_SPACE})`, 'gu');
const GAP = new RegExp(`${PY_SPACE}*`, 'uy');
const NEXT_TOKEN = new RegExp(`${PY_NON_SPACE}*`, 'uy');
const SPACE = new RegExp(PY_SPACE, 'u');
const REALIGN = new RegExp(`^["')\\]}]+?(?:${PY_SPACE}+|(?=--)|$)`, 'u');

/** The punkt word token that ends just before `end` (the sentence-end run starts at `end`). */
function tokenBefore(text: string, end: number): string {
  let start = end;
  while (start > 0 && !SPACE.test(text[start - 1]!) && !NON_WORD_SET.has(text[start - 1]!)) start--;
  let word = text.slice(start, end);
  const dash = word.lastIndexOf('--');
  if (dash >= 0) word = word.slice(dash + 2);
  let i = 0;
  while (i < word.length && NOT_WORD_START.has(word[i]!)) i++;
  return word.slice(i);
}

function isBreak(text: string, run: string, runStart: number, next: string): boolean {
  if (run.includes('?') || run.includes('!')) return true;
  const nextFirst = next.charAt(0);
  if (run.length >= 2) return /\p{Lu}/u.test(nextFirst);
  const body = tokenBefore(text, runStart);
  if (body === '') return true;
  const token = `${body}.`;
  if (INITIAL.test(token)) return false;
  const lower = body.toLowerCase();
  if (ABBREVIATIONS.has(lower) || ABBREVIATIONS.has(lower.split('-').pop()!)) return false;
  if (NUMBER.test(token)) return !/\p{Ll}/u.test(nextFirst);
  return true;
}

/** Approximate `len(nltk.sent_tokenize(text))` (punkt, English); see the module comment. */
export function countSentencesApprox(text: string): number {
  if (text.length === 0) return 0;
  const starts = [0];
  for (const m of text.matchAll(CANDIDATE)) {
    const end = m.index + m[0].length;
    GAP.lastIndex = end;
    const gap = GAP.exec(text)![0].length;
    NEXT_TOKEN.lastIndex = end + gap;
    const next = gap > 0 ? NEXT_TOKEN.exec(text)![0] : text.charAt(end);
    if (isBreak(text, m[0], m.index, next)) starts.push(end + gap);
  }
  let count = 0;
  for (let i = 0; i < starts.length; i++) {
    const segment = text.slice(starts[i], starts[i + 1] ?? text.length);
    const realigned = i > 0 ? segment.slice((REALIGN.exec(segment)?.[0] ?? '').length) : segment;
    if (realigned.length > 0) count++;
  }
  return count;
}

const CLITIC = /^(.*[^' ])('[sSmMdD]|'ll|'LL|'re|'RE|'ve|'VE|n't|N'T)$/;
const CONTRACTIONS: RegExp[] = [
  /^(can)(not)$/i,
  /^(gim)(me)$/i,
  /^(gon)(na)$/i,
  /^(got)(ta)$/i,
  /^(lem)(me)$/i,
  /^(wan)(na)$/i,
];

/** Approximate `nltk.word_tokenize(text)` (Treebank rules) as far as all-capital word counts go. */
export function wordTokensApprox(text: string): string[] {
  let t = ` ${text} `;
  t = t.replace(/[«»“”‘’„`"]/g, ' " ');
  t = t.replace(/([:,])(?!\d)/g, ' $1 ');
  t = t.replace(/\.\.\./g, ' ... ');
  t = t.replace(/[;@#$%&?!*[\](){}<>]/g, ' $& ');
  t = t.replace(/--/g, ' -- ');
  const out: string[] = [];
  for (const piece of pySplit(t)) {
    let word = piece;
    if (word.length > 1 && word.startsWith("'") && !/^'(re|ve|ll|m|t|s|d|n)/i.test(word)) {
      out.push("'");
      word = word.slice(1);
    }
    const clitic = CLITIC.exec(word);
    if (clitic) {
      out.push(clitic[1]!, clitic[2]!);
      continue;
    }
    if (word.length > 1 && word.endsWith("'")) {
      out.push(word.slice(0, -1), "'");
      continue;
    }
    const contraction = CONTRACTIONS.map((re) => re.exec(word)).find((m) => m);
    if (contraction) out.push(contraction[1]!, contraction[2]!);
    else out.push(word);
  }
  return out;
}
