import type { SysIfevalRow } from './datasets.ts';
import { countSentencesApprox, wordTokensApprox } from './nltk-approx.ts';
import {
  escapeRegExp,
  PY_DOT,
  PY_LINE_END,
  PY_LINE_START,
  PY_SPACE,
  PY_WORD,
  PY_WORD_BOUNDARY,
  pyIsLower,
  pyIsUpper,
  pyLstrip,
  pyRstrip,
  pySplit,
  pyStrip,
} from './py-text.ts';

/**
 * IFEval instruction checkers (google-research instruction_following_eval, instructions.py and
 * evaluation_lib.py) for the instruction ids that occur in SystemCheck's sys_ifeval set.
 *
 * Exact ports, with Python's string and regex semantics (py-text.ts):
 *   keywords:existence, keywords:frequency, keywords:forbidden_words, keywords:letter_frequency,
 *   length_constraints:number_words, length_constraints:number_paragraphs,
 *   length_constraints:nth_paragraph_first_word, detectable_format:number_bullet_lists,
 *   detectable_format:title, detectable_format:json_format, detectable_format:number_highlighted_sections,
 *   detectable_format:multiple_sections, detectable_format:constrained_response,
 *   detectable_content:number_placeholders, detectable_content:postscript, startend:end_checker,
 *   startend:quotation, punctuation:no_comma, combination:repeat_prompt, combination:two_responses.
 *   One deviation: IFEval uses keywords, the section splitter and unknown postscript markers as regular
 *   expressions; here they match literally (every value in sys_ifeval is a plain word, so results agree).
 * Approximate (approximateInstructionIds):
 *   length_constraints:number_sentences counts sentences with a punkt approximation (nltk-approx.ts);
 *   change_case:capital_word_frequency counts words with a Treebank approximation (nltk-approx.ts);
 *   change_case:english_capital / english_lowercase keep the isupper()/islower() test but not IFEval's
 *   langdetect "is English" condition (a non-English all-caps answer passes here).
 * Unsupported: language:response_language (needs langdetect's language profiles).
 *
 * Checks take the response unstripped, as IFEval does; kwargs come from the row (missing or invalid values,
 * which IFEval would replace with random ones, throw here).
 */

export type IfevalKwargs = Record<string, unknown>;

type Relation = 'less than' | 'at least';

interface Checker {
  check(response: string, kw: Kwargs): boolean;
  approximate?: true;
}

class Kwargs {
  constructor(
    private readonly id: string,
    private readonly kw: IfevalKwargs,
    readonly prompt: string | undefined,
  ) {}

  private fail(key: string, expected: string): never {
    throw new Error(`${this.id}: kwarg "${key}" must be ${expected}, got ${JSON.stringify(this.kw[key])}`);
  }

  has(key: string): boolean {
    return this.kw[key] !== undefined && this.kw[key] !== null;
  }

  count(key: string): number {
    const v = this.kw[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) this.fail(key, 'a non-negative integer');
    return v;
  }

  text(key: string): string {
    const v = this.kw[key];
    if (typeof v !== 'string' || v === '') this.fail(key, 'a non-empty string');
    return v;
  }

  texts(key: string): string[] {
    const v = this.kw[key];
    if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === 'string' && x !== '')) this.fail(key, 'a non-empty list of strings');
    return v as string[];
  }

  relation(key: string): Relation {
    const v = this.kw[key];
    if (v !== 'less than' && v !== 'at least') this.fail(key, '"less than" or "at least"');
    return v;
  }
}

/** IFEval's comparisons: "less than" is count < n, "at least" is count >= n. */
function compare(count: number, relation: Relation, n: number): boolean {
  return relation === 'less than' ? count < n : count >= n;
}

function countMatches(re: RegExp, text: string): number {
  let n = 0;
  for (const _ of text.matchAll(re)) n++;
  return n;
}

const WORD_RUN = new RegExp(`${PY_WORD}+`, 'gu');
const PARAGRAPH_DIVIDER = new RegExp(`${PY_SPACE}?\\*\\*\\*${PY_SPACE}?`, 'u');
const STAR_BULLET = new RegExp(`${PY_LINE_START}${PY_SPACE}*\\*[^*]${PY_DOT}*${PY_LINE_END}`, 'gu');
const DASH_BULLET = new RegExp(`${PY_LINE_START}${PY_SPACE}*-${PY_DOT}*${PY_LINE_END}`, 'gu');
const TITLE = /<<[^\n]+>>/g;
const SINGLE_HIGHLIGHT = /\*[^\n*]*\*/g;
const DOUBLE_HIGHLIGHT = /\*\*[^\n*]*\*\*/g;
const PLACEHOLDER = /\[[^\n]*?\]/g;
const CONSTRAINED_OPTIONS = ['My answer is yes.', 'My answer is no.', 'My answer is maybe.'];

/** json.loads acceptance: JSON.parse, plus Python's bare NaN / Infinity / -Infinity outside strings. */
function parsesAsPythonJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    const replaced = text.replace(/("(?:[^"\\]|\\.)*")|-?\b(?:NaN|Infinity)\b/g, (m, str: string | undefined) => str ?? '0');
    if (replaced === text) return false;
    try {
      JSON.parse(replaced);
      return true;
    } catch {
      return false;
    }
  }
}

function removePrefix(s: string, p: string): string {
  return s.startsWith(p) ? s.slice(p.length) : s;
}

function removeSuffix(s: string, p: string): string {
  return p && s.endsWith(p) ? s.slice(0, s.length - p.length) : s;
}

const CHECKERS: Record<string, Checker> = {
  'punctuation:no_comma': { check: (r) => !r.includes(',') },

  'length_constraints:number_words': {
    // nltk RegexpTokenizer(r"\w+") with Unicode \w.
    check: (r, kw) => compare(countMatches(WORD_RUN, r), kw.relation('relation'), kw.count('num_words')),
  },

  'length_constraints:number_sentences': {
    approximate: true,
    check: (r, kw) => compare(countSentencesApprox(r), kw.relation('relation'), kw.count('num_sentences')),
  },

  'length_constraints:number_paragraphs': {
    check: (r, kw) => {
      const paragraphs = r.split(PARAGRAPH_DIVIDER);
      let count = paragraphs.length;
      for (const [i, p] of paragraphs.entries()) {
        if (pyStrip(p)) continue;
        if (i === 0 || i === paragraphs.length - 1) count--;
        else return false;
      }
      return count === kw.count('num_paragraphs');
    },
  },

  'length_constraints:nth_paragraph_first_word': {
    check: (r, kw) => {
      const expected = kw.count('num_paragraphs');
      const nth = kw.count('nth_paragraph');
      if (nth < 1 || nth > expected) throw new Error(`length_constraints:nth_paragraph_first_word: nth_paragraph ${nth} is outside 1..num_paragraphs (${expected})`);
      const firstWord = kw.text('first_word').toLowerCase();
      const paragraphs = r.split('\n\n');
      const count = paragraphs.filter((p) => pyStrip(p)).length;
      if (nth > count) return false;
      const paragraph = pyStrip(paragraphs[nth - 1]!);
      if (!paragraph) return false;
      const word = pyLstrip(pyLstrip(pyStrip(pySplit(paragraph)[0]!), "'"), '"');
      let first = '';
      for (const ch of word) {
        if ('.,?!\'"'.includes(ch)) break;
        first += ch.toLowerCase();
      }
      return count === expected && first === firstWord;
    },
  },

  'detectable_format:number_bullet_lists': {
    check: (r, kw) => countMatches(STAR_BULLET, r) + countMatches(DASH_BULLET, r) === kw.count('num_bullets'),
  },

  'detectable_format:title': {
    check: (r) => [...r.matchAll(TITLE)].some((m) => pyStrip(pyRstrip(pyLstrip(m[0], '<'), '>')) !== ''),
  },

  'detectable_format:json_format': {
    check: (r) => {
      let v = pyStrip(r);
      for (const p of ['```json', '```Json', '```JSON', '```']) v = removePrefix(v, p);
      return parsesAsPythonJson(pyStrip(removeSuffix(v, '```')));
    },
  },

  'detectable_format:number_highlighted_sections': {
    check: (r, kw) => {
      let n = 0;
      for (const m of r.matchAll(SINGLE_HIGHLIGHT)) if (pyStrip(pyStrip(m[0], '*'))) n++;
      for (const m of r.matchAll(DOUBLE_HIGHLIGHT)) if (pyStrip(removeSuffix(removePrefix(m[0], '**'), '**'))) n++;
      return n >= kw.count('num_highlights');
    },
  },

  'detectable_format:multiple_sections': {
    check: (r, kw) => {
      const splitter = pyStrip(kw.text('section_spliter'));
      const re = new RegExp(`${PY_SPACE}?${escapeRegExp(splitter)}${PY_SPACE}?\\p{Nd}+${PY_SPACE}?`, 'gu');
      return countMatches(re, r) >= kw.count('num_sections');
    },
  },

  'detectable_format:constrained_response': {
    check: (r) => {
      const v = pyStrip(r);
      return CONSTRAINED_OPTIONS.some((o) => v.includes(o));
    },
  },

  'detectable_content:number_placeholders': {
    check: (r, kw) => countMatches(PLACEHOLDER, r) >= kw.count('num_placeholders'),
  },

  'detectable_content:postscript': {
    check: (r, kw) => {
      const marker = pyStrip(kw.text('postscript_marker'));
      const body =
        marker === 'P.P.S' ? `p\\.${PY_SPACE}?p\\.${PY_SPACE}?s` : marker === 'P.S.' ? `p\\.${PY_SPACE}?s\\.` : escapeRegExp(marker.toLowerCase());
      return new RegExp(`${PY_SPACE}*${body}${PY_DOT}*${PY_LINE_END}`, 'u').test(r.toLowerCase());
    },
  },

  'startend:end_checker': {
    check: (r, kw) => pyStrip(pyStrip(r), '"').toLowerCase().endsWith(pyStrip(kw.text('end_phrase')).toLowerCase()),
  },

  'startend:quotation': {
    check: (r) => {
      const v = pyStrip(r);
      return [...v].length > 1 && v.startsWith('"') && v.endsWith('"');
    },
  },

  'change_case:english_capital': { approximate: true, check: (r) => pyIsUpper(r) },

  'change_case:english_lowercase': { approximate: true, check: (r) => pyIsLower(r) },

  'change_case:capital_word_frequency': {
    approximate: true,
    check: (r, kw) =>
      compare(wordTokensApprox(r).filter(pyIsUpper).length, kw.relation('capital_relation'), kw.count('capital_frequency')),
  },

  'keywords:existence': {
    check: (r, kw) => kw.texts('keywords').every((k) => new RegExp(escapeRegExp(k), 'iu').test(r)),
  },

  'keywords:frequency': {
    check: (r, kw) =>
      compare(countMatches(new RegExp(escapeRegExp(pyStrip(kw.text('keyword'))), 'giu'), r), kw.relation('relation'), kw.count('frequency')),
  },

  'keywords:forbidden_words': {
    check: (r, kw) => kw.texts('forbidden_words').every((w) => !new RegExp(`${PY_WORD_BOUNDARY}${escapeRegExp(w)}${PY_WORD_BOUNDARY}`, 'iu').test(r)),
  },

  'keywords:letter_frequency': {
    check: (r, kw) => {
      const raw = kw.text('letter');
      if ([...raw].length !== 1) throw new Error(`keywords:letter_frequency: kwarg "letter" must be one character, got ${JSON.stringify(raw)}`);
      const letter = pyStrip(raw).toLowerCase();
      let n = 0;
      for (const ch of r.toLowerCase()) if (ch === letter) n++;
      return compare(n, kw.relation('let_relation'), kw.count('let_frequency'));
    },
  },

  'combination:repeat_prompt': {
    check: (r, kw) => {
      const prompt = kw.has('prompt_to_repeat') ? kw.text('prompt_to_repeat') : kw.prompt;
      if (prompt === undefined) throw new Error('combination:repeat_prompt: needs kwarg "prompt_to_repeat" (or the prompt)');
      return pyStrip(r).toLowerCase().startsWith(pyStrip(prompt).toLowerCase());
    },
  },

  'combination:two_responses': {
    check: (r) => {
      const parts = r.split('******');
      const valid: string[] = [];
      for (const [i, part] of parts.entries()) {
        if (pyStrip(part)) valid.push(part);
        else if (i !== 0 && i !== parts.length - 1) return false;
      }
      return valid.length === 2 && pyStrip(valid[0]!) !== pyStrip(valid[1]!);
    },
  },
};

/** Instruction ids with a checker here (exact or approximate). */
export const supportedInstructionIds: readonly string[] = Object.keys(CHECKERS);
/** Supported ids whose checker approximates IFEval's (see the module comment). */
export const approximateInstructionIds: readonly string[] = Object.keys(CHECKERS).filter((id) => CHECKERS[id]!.approximate);
/** Ids of sys_ifeval with no checker here. */
export const unsupportedInstructionIds: readonly string[] = ['language:response_language'];

/**
 * Strict IFEval check of one instruction: the response must be non-blank after strip() and pass the
 * checker. `prompt` is only used by combination:repeat_prompt when kwargs has no prompt_to_repeat.
 * Returns 'unsupported' for ids without a checker.
 */
export function checkInstruction(id: string, kwargs: IfevalKwargs | null | undefined, response: string, prompt?: string): boolean | 'unsupported' {
  const checker = Object.hasOwn(CHECKERS, id) ? CHECKERS[id] : undefined;
  if (!checker) return 'unsupported';
  return pyStrip(response) !== '' && checker.check(response, new Kwargs(id, kwargs ?? {}, prompt));
}

/**
 * IFEval's loose variants, in its order: the response, with asterisks removed, without the first line,
 * without the last line, without both (each stripped), and those three with asterisks removed.
 */
export function looseVariants(response: string): string[] {
  const lines = response.split('\n');
  const first = pyStrip(lines.slice(1).join('\n'));
  const last = pyStrip(lines.slice(0, -1).join('\n'));
  const both = pyStrip(lines.slice(1, -1).join('\n'));
  const noStars = (s: string) => s.replaceAll('*', '');
  return [response, noStars(response), first, last, both, noStars(first), noStars(last), noStars(both)];
}

/** Loose IFEval check: passes if any loose variant passes the strict check. */
export function checkInstructionLoose(id: string, kwargs: IfevalKwargs | null | undefined, response: string, prompt?: string): boolean | 'unsupported' {
  if (!Object.hasOwn(CHECKERS, id)) return 'unsupported';
  return looseVariants(response).some((v) => checkInstruction(id, kwargs, v, prompt) === true);
}

export interface IfevalLevels {
  /** false if a checked instruction failed; null if all checked passed but some were unsupported; else true. */
  promptLevel: boolean | null;
  /** One entry per id in `checked`. */
  instructionLevel: boolean[];
}

export interface IfevalRowScore {
  /** Ids whose checkers ran, in row order. */
  checked: string[];
  strict: IfevalLevels;
  loose: IfevalLevels;
  /** Ids without a checker: counted neither as followed nor as broken. */
  unsupported: string[];
  /** Checked ids whose checker is approximate. */
  approximate: string[];
}

function levels(results: boolean[], anyUnsupported: boolean): IfevalLevels {
  const promptLevel = results.some((x) => !x) ? false : anyUnsupported ? null : true;
  return { promptLevel, instructionLevel: results };
}

/** Scores a response to a sys_ifeval row, strict and loose, prompt- and instruction-level. */
export function scoreSysIfevalRow(row: SysIfevalRow, response: string): IfevalRowScore {
  return scoreInstructionList(row.instruction_id_list, row.kwargs, response, row.prompt);
}

function scoreInstructionList(ids: string[], kwargs: (IfevalKwargs | null)[], response: string, prompt?: string): IfevalRowScore {
  const checked: string[] = [];
  const strict: boolean[] = [];
  const loose: boolean[] = [];
  const unsupported: string[] = [];
  ids.forEach((id, i) => {
    const kw = kwargs[i] ?? {};
    const s = checkInstruction(id, kw, response, prompt);
    if (s === 'unsupported') {
      unsupported.push(id);
      return;
    }
    checked.push(id);
    strict.push(s);
    loose.push(checkInstructionLoose(id, kw, response, prompt) === true);
  });
  return {
    checked,
    strict: levels(strict, unsupported.length > 0),
    loose: levels(loose, unsupported.length > 0),
    unsupported,
    approximate: checked.filter((id) => approximateInstructionIds.includes(id)),
  };
}

/**
 * Older interface (src/eval/external-items.ts): prompt-level over the checked instructions only, with the
 * unsupported ids listed apart. Prefer scoreSysIfevalRow, whose prompt level is null when undecidable.
 */
export function scoreIfeval(
  ids: string[],
  kwargs: (IfevalKwargs | null)[],
  response: string,
): { strict: { prompt: boolean; instructions: boolean[] }; loose: { prompt: boolean; instructions: boolean[] }; unsupported: string[] } {
  const s = scoreInstructionList(ids, kwargs, response);
  const old = (l: IfevalLevels) => ({ prompt: l.instructionLevel.length > 0 && l.instructionLevel.every(Boolean), instructions: l.instructionLevel });
  return { strict: old(s.strict), loose: old(s.loose), unsupported: s.unsupported };
}
