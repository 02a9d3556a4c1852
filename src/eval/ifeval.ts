/**
 * IFEval instruction checkers for the instruction ids of SystemCheck's sys_ifeval set that can be
 * implemented exactly without IFEval's NLP dependencies. Unsupported here (they need nltk's punkt sentence
 * splitter or langdetect): length_constraints:number_sentences, language:response_language,
 * length_constraints:nth_paragraph_first_word. change_case:english_* drop IFEval's langdetect "is English"
 * condition and keep the case test.
 */
type Kwargs = Record<string, unknown>;
type Checker = (response: string, kw: Kwargs) => boolean;

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const num = (kw: Kwargs, key: string) => Number(kw[key]);
const compare = (count: number, relation: unknown, n: number) => (relation === 'less than' ? count < n : count >= n);

const checkers: Record<string, Checker> = {
  'punctuation:no_comma': (r) => !r.includes(','),
  'length_constraints:number_words': (r, kw) => compare((r.match(/\w+/g) ?? []).length, kw.relation, num(kw, 'num_words')),
  'keywords:forbidden_words': (r, kw) => ((kw.forbidden_words as string[]) ?? []).every((w) => !new RegExp(`\\b${esc(w)}\\b`, 'i').test(r)),
  'keywords:existence': (r, kw) => ((kw.keywords as string[]) ?? []).every((w) => new RegExp(esc(w), 'i').test(r)),
  'keywords:frequency': (r, kw) => compare((r.match(new RegExp(esc(String(kw.keyword)), 'gi')) ?? []).length, kw.relation, num(kw, 'frequency')),
  'keywords:letter_frequency': (r, kw) => {
    const letter = String(kw.letter).toLowerCase();
    const count = [...r.toLowerCase()].filter((c) => c === letter).length;
    return compare(count, kw.let_relation, num(kw, 'let_frequency'));
  },
  'detectable_format:number_highlighted_sections': (r, kw) => {
    let count = 0;
    for (const m of r.match(/\*[^\n*]*\*/g) ?? []) if (m.replace(/^\*+|\*+$/g, '').trim()) count++;
    for (const m of r.match(/\*\*[^\n*]*\*\*/g) ?? []) if (m.replace(/^\*+|\*+$/g, '').trim()) count++;
    return count >= num(kw, 'num_highlights');
  },
  'detectable_format:title': (r) => (r.match(/<<[^\n]+>>/g) ?? []).some((t) => t.slice(2, -2).trim().length > 0),
  'detectable_format:number_bullet_lists': (r, kw) => {
    const star = r.match(/^\s*\*[^*].*$/gm) ?? [];
    const dash = r.match(/^\s*-.*$/gm) ?? [];
    return star.length + dash.length === num(kw, 'num_bullets');
  },
  'detectable_format:json_format': (r) => {
    const v = r.trim().replace(/^```(?:json|Json|JSON)?/, '').replace(/```$/, '').trim();
    try {
      JSON.parse(v);
      return true;
    } catch {
      return false;
    }
  },
  'detectable_format:multiple_sections': (r, kw) => {
    const splitter = String(kw.section_spliter).trim();
    const sections = r.split(new RegExp(`\\s?${esc(splitter)}\\s?\\d+\\s?`));
    return sections.length - 1 >= num(kw, 'num_sections');
  },
  'detectable_format:constrained_response': (r) => ['My answer is yes.', 'My answer is no.', 'My answer is maybe.'].some((o) => r.trim().includes(o)),
  'startend:quotation': (r) => {
    const v = r.trim();
    return v.length > 1 && v.startsWith('"') && v.endsWith('"');
  },
  'startend:end_checker': (r, kw) => r.trim().toLowerCase().endsWith(String(kw.end_phrase).trim().toLowerCase()),
  'change_case:english_lowercase': (r) => r === r.toLowerCase(),
  'change_case:english_capital': (r) => r === r.toUpperCase() && r !== r.toLowerCase(),
  'change_case:capital_word_frequency': (r, kw) => {
    const words = r.match(/\w+|[^\w\s]+/g) ?? [];
    const capital = words.filter((w) => w === w.toUpperCase() && w !== w.toLowerCase()).length;
    return compare(capital, kw.capital_relation, num(kw, 'capital_frequency'));
  },
  'detectable_content:number_placeholders': (r, kw) => (r.match(/\[.*?\]/g) ?? []).length >= num(kw, 'num_placeholders'),
  'detectable_content:postscript': (r, kw) => {
    const marker = String(kw.postscript_marker);
    const pattern = marker === 'P.P.S' ? /\s*p\.\s?p\.\s?s.*$/m : marker === 'P.S.' ? /\s*p\.\s?s\..*$/m : new RegExp(`\\s*${esc(marker.toLowerCase())}.*$`, 'm');
    return pattern.test(r.toLowerCase());
  },
  'length_constraints:number_paragraphs': (r, kw) => {
    const paragraphs = r.split(/\s?\*\*\*\s?/);
    let count = paragraphs.length;
    for (const [i, p] of paragraphs.entries()) {
      if (!p.trim()) {
        if (i === 0 || i === paragraphs.length - 1) count--;
        else return false;
      }
    }
    return count === num(kw, 'num_paragraphs');
  },
  'combination:repeat_prompt': (r, kw) => r.trim().toLowerCase().startsWith(String(kw.prompt_to_repeat).trim().toLowerCase()),
  'combination:two_responses': (r) => {
    const parts = r.split('******');
    const valid = parts.filter((p, i) => p.trim() || (i !== 0 && i !== parts.length - 1));
    if (parts.some((p, i) => !p.trim() && i !== 0 && i !== parts.length - 1)) return false;
    const nonEmpty = parts.filter((p) => p.trim());
    return valid.length >= 2 && nonEmpty.length === 2 && nonEmpty[0]!.trim() !== nonEmpty[1]!.trim();
  },
};

export const supportedInstructionIds = Object.keys(checkers);

/** Strict check of one instruction; 'unsupported' for ids this module cannot check exactly. */
export function checkInstruction(id: string, kwargs: Kwargs | null, response: string): boolean | 'unsupported' {
  const c = checkers[id];
  if (!c) return 'unsupported';
  return response.trim() !== '' && c(response, kwargs ?? {});
}

/** IFEval's loose variants: drop the first line, the last line, both, and each with asterisks removed. */
export function looseVariants(response: string): string[] {
  const lines = response.split('\n');
  const first = lines.slice(1).join('\n').trim();
  const last = lines.slice(0, -1).join('\n').trim();
  const both = lines.slice(1, -1).join('\n').trim();
  const base = [response, first, last, both];
  return [...base, ...base.map((r) => r.replaceAll('*', ''))];
}

export interface IfevalScore {
  strict: { prompt: boolean; instructions: boolean[] };
  loose: { prompt: boolean; instructions: boolean[] };
  unsupported: string[];
}

/** Scores a response to a sys_ifeval row on its supported instructions (unsupported ones are listed, not passed). */
export function scoreIfeval(ids: string[], kwargs: (Kwargs | null)[], response: string): IfevalScore {
  const strict: boolean[] = [];
  const loose: boolean[] = [];
  const unsupported: string[] = [];
  ids.forEach((id, i) => {
    const s = checkInstruction(id, kwargs[i] ?? {}, response);
    if (s === 'unsupported') {
      unsupported.push(id);
      return;
    }
    strict.push(s);
    loose.push(looseVariants(response).some((v) => checkInstruction(id, kwargs[i] ?? {}, v) === true));
  });
  return {
    strict: { prompt: strict.length > 0 && strict.every(Boolean), instructions: strict },
    loose: { prompt: loose.length > 0 && loose.every(Boolean), instructions: loose },
    unsupported,
  };
}
