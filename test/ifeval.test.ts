import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { loadSysIfeval } from '../src/eval/datasets.ts';
import {
  approximateInstructionIds,
  checkInstruction,
  checkInstructionLoose,
  looseVariants,
  scoreSysIfevalRow,
  supportedInstructionIds,
  unsupportedInstructionIds,
} from '../src/eval/ifeval.ts';
import { countSentencesApprox, wordTokensApprox } from '../src/eval/nltk-approx.ts';

const data = (f: string) => fileURLToPath(new URL(`../data/${f}`, import.meta.url));

/** [id, kwargs, passing response, failing response] */
const CASES: [string, Record<string, unknown>, string, string][] = [
  ['punctuation:no_comma', {}, 'No commas here.', 'One, two.'],
  ['length_constraints:number_words', { relation: 'less than', num_words: 5 }, 'Only four words here.', 'This one has six whole words.'],
  ['length_constraints:number_words', { relation: 'at least', num_words: 3 }, 'naïve café_au lait', 'two words'],
  ['length_constraints:number_sentences', { relation: 'less than', num_sentences: 3 }, 'One sentence. Mr. Smith agrees.', 'One. Two? Three!'],
  ['length_constraints:number_sentences', { relation: 'at least', num_sentences: 2 }, 'First line. Second line.', 'A list\n- without\n- periods'],
  ['length_constraints:number_paragraphs', { num_paragraphs: 2 }, 'one\n***\ntwo', 'one\n***\n***\ntwo'],
  ['length_constraints:number_paragraphs', { num_paragraphs: 2 }, '***\none *** two\n***', 'one\n\ntwo'],
  [
    'length_constraints:nth_paragraph_first_word',
    { num_paragraphs: 3, nth_paragraph: 2, first_word: 'Weekend' },
    'Intro.\n\n"Weekend, at last." we said.\n\nEnd.',
    'Intro.\n\nThe weekend.\n\nEnd.',
  ],
  ['length_constraints:nth_paragraph_first_word', { num_paragraphs: 2, nth_paragraph: 1, first_word: 'it' }, 'It is.\n\nYes.', 'It is.\n\nYes.\n\nNo.'],
  ['detectable_format:number_bullet_lists', { num_bullets: 2 }, '* one\n* two', '* one\n* two\n- three'],
  ['detectable_format:number_bullet_lists', { num_bullets: 1 }, 'Intro\n  - only one', '**bold** is no bullet'],
  ['detectable_format:title', {}, '<<My Title>>\nbody', 'No title << >>'],
  ['detectable_format:json_format', {}, '```json\n{"a": 1}\n```', '{a: 1}'],
  ['detectable_format:json_format', {}, '  [1, NaN, -Infinity]  ', 'Here is JSON: {"a": 1}'],
  ['detectable_format:number_highlighted_sections', { num_highlights: 2 }, '*a* and **b**', 'only *a* and * *'],
  ['detectable_format:multiple_sections', { section_spliter: 'Section', num_sections: 2 }, 'Section 1\nx\nSection 2\ny', 'Section 1 only, section 2 is lower case'],
  ['detectable_format:multiple_sections', { section_spliter: 'SECTION', num_sections: 1 }, 'SECTION 1: all of it', 'SECTION one'],
  ['detectable_format:constrained_response', {}, '  My answer is maybe. ', 'My answer is Yes.'],
  ['detectable_content:number_placeholders', { num_placeholders: 2 }, 'Dear [name] at [address]', 'Dear [name] at [add\nress]'],
  ['detectable_content:postscript', { postscript_marker: 'P.S.' }, 'Hello.\np. s. bye', 'Hello. PS bye'],
  ['detectable_content:postscript', { postscript_marker: 'P.P.S' }, 'Hi.\nP.P.S later', 'Hi.\nP.S. later'],
  ['startend:end_checker', { end_phrase: 'Any questions?' }, 'Done. any questions?"  ', 'Any questions? Done.'],
  ['startend:quotation', {}, '  "quoted"\n', 'not "quoted"'],
  ['change_case:english_lowercase', {}, 'all lower, 123!', 'Not lower'],
  ['change_case:english_capital', {}, 'ALL CAPS!', 'ALL CAPs'],
  ['change_case:capital_word_frequency', { capital_frequency: 2, capital_relation: 'at least' }, "DON'T stop", 'The CAT sat'],
  ['change_case:capital_word_frequency', { capital_frequency: 2, capital_relation: 'less than' }, 'The CAT sat', 'THE CAT'],
  ['keywords:existence', { keywords: ['moon', 'tide'] }, 'The Moon moves the tides.', 'The moon is bright.'],
  ['keywords:frequency', { keyword: 'data', frequency: 2, relation: 'at least' }, 'Data in, metadata out.', 'Some data.'],
  ['keywords:frequency', { keyword: 'fake', frequency: 2, relation: 'less than' }, 'One fake.', 'Fake and FAKE.'],
  ['keywords:forbidden_words', { forbidden_words: ['cat', 'dog'] }, 'A category or hotdog is fine.', 'My Cat sleeps.'],
  ['keywords:forbidden_words', { forbidden_words: ['rock'] }, 'A rocky rockér.', 'éé rock-solid'],
  ['keywords:letter_frequency', { letter: 'z', let_frequency: 2, let_relation: 'less than' }, 'Zero.', 'Zizz.'],
  ['keywords:letter_frequency', { letter: 'q', let_frequency: 2, let_relation: 'at least' }, 'Quick quiz', 'Quick'],
  ['combination:repeat_prompt', { prompt_to_repeat: 'Say hi. ' }, '  say HI. Hi!', 'Hi! Say hi.'],
  ['combination:two_responses', {}, 'first\n******\nsecond', 'first\n******\nfirst'],
  ['combination:two_responses', {}, '******\nA\n******\nB\n******', 'A\n******\n\n******\nB'],
];

test('every supported IFEval checker passes a good response and fails a bad one', () => {
  for (const [id, kw, pass, fail] of CASES) {
    assert.equal(checkInstruction(id, kw, pass), true, `${id} should pass: ${JSON.stringify(pass)}`);
    assert.equal(checkInstruction(id, kw, fail), false, `${id} should fail: ${JSON.stringify(fail)}`);
  }
  assert.deepEqual(new Set(CASES.map((c) => c[0])), new Set(supportedInstructionIds));
});

test('the checkers cover every instruction id of sys_ifeval except the language one', () => {
  const rows = loadSysIfeval(data('external/sys_ifeval/sys_ifeval.jsonl'));
  const counts = new Map<string, number>();
  for (const r of rows) for (const id of r.instruction_id_list) counts.set(id, (counts.get(id) ?? 0) + 1);
  assert.equal(counts.size, 25);
  assert.deepEqual([...counts.keys()].filter((id) => !supportedInstructionIds.includes(id)), ['language:response_language']);
  assert.deepEqual(unsupportedInstructionIds, ['language:response_language']);
  assert.equal(counts.get('language:response_language'), 31);
  assert.equal(counts.get('punctuation:no_comma'), 65);
  assert.deepEqual(
    [...approximateInstructionIds].sort(),
    ['change_case:capital_word_frequency', 'change_case:english_capital', 'change_case:english_lowercase', 'length_constraints:number_sentences'],
  );
  assert.equal(checkInstruction('language:response_language', { language: 'fr' }, 'Bonjour'), 'unsupported');
  assert.equal(checkInstruction('no:such_id', {}, 'x'), 'unsupported');
});

test('a blank response follows nothing, even a negative instruction', () => {
  assert.equal(checkInstruction('punctuation:no_comma', {}, '  \n'), false);
  assert.equal(checkInstruction('keywords:forbidden_words', { forbidden_words: ['x'] }, ''), false);
});

test('invalid kwargs are errors, not random values', () => {
  assert.throws(() => checkInstruction('length_constraints:number_words', { relation: 'at most', num_words: 3 }, 'a b'), /kwarg "relation"/);
  assert.throws(() => checkInstruction('keywords:letter_frequency', { letter: 'ab', let_frequency: 1, let_relation: 'at least' }, 'a'), /one character/);
  assert.throws(() => checkInstruction('detectable_format:number_bullet_lists', {}, '* a'), /kwarg "num_bullets"/);
});

test('loose variants are IFEval’s eight, in order', () => {
  assert.deepEqual(looseVariants('Sure:\n*a*\nbye'), ['Sure:\n*a*\nbye', 'Sure:\na\nbye', '*a*\nbye', 'Sure:\n*a*', '*a*', 'a\nbye', 'Sure:\na', 'a']);
});

test('loose scoring forgives a first or last line and asterisks; strict does not', () => {
  const quoted = 'Sure, here it is:\n"the answer"';
  assert.equal(checkInstruction('startend:quotation', {}, quoted), false);
  assert.equal(checkInstructionLoose('startend:quotation', {}, quoted), true);
  const ended = 'Call me. Is there anything else I can help with?\n(Generated text.)';
  const kw = { end_phrase: 'Is there anything else I can help with?' };
  assert.equal(checkInstruction('startend:end_checker', kw, ended), false);
  assert.equal(checkInstructionLoose('startend:end_checker', kw, ended), true);
  assert.equal(checkInstruction('change_case:english_lowercase', {}, '**note**: all lower'), true);
  assert.equal(checkInstruction('detectable_format:number_highlighted_sections', { num_highlights: 1 }, 'none'), false);
  assert.equal(checkInstructionLoose('detectable_format:number_highlighted_sections', { num_highlights: 1 }, 'none'), false);
  assert.equal(checkInstruction('punctuation:no_comma', {}, 'Hi, there.\nNo commas.'), false);
  assert.equal(checkInstructionLoose('punctuation:no_comma', {}, 'Hi, there.\nNo commas.'), true);
});

test('row scores: strict and loose, prompt and instruction level; unsupported ids are reported, not passed', () => {
  const rows = loadSysIfeval(data('external/sys_ifeval/sys_ifeval.jsonl'));
  const quote = rows.find((r) => r.key === 122)!;
  assert.deepEqual(quote.instruction_id_list, ['startend:quotation']);
  const s = scoreSysIfevalRow(quote, 'Here you go:\n"Hey teens!"');
  assert.deepEqual(s.checked, ['startend:quotation']);
  assert.deepEqual(s.strict, { promptLevel: false, instructionLevel: [false] });
  assert.deepEqual(s.loose, { promptLevel: true, instructionLevel: [true] });
  assert.deepEqual(s.unsupported, []);

  const mixed = rows.find((r) => r.key === 1582)!;
  assert.deepEqual(mixed.instruction_id_list, ['combination:two_responses', 'language:response_language', 'punctuation:no_comma']);
  const ok = scoreSysIfevalRow(mixed, 'Xin chào\n******\nTạm biệt');
  assert.deepEqual(ok.checked, ['combination:two_responses', 'punctuation:no_comma']);
  assert.deepEqual(ok.unsupported, ['language:response_language']);
  assert.deepEqual(ok.strict, { promptLevel: null, instructionLevel: [true, true] });
  const bad = scoreSysIfevalRow(mixed, 'Xin chào, bạn');
  assert.deepEqual(bad.strict, { promptLevel: false, instructionLevel: [false, false] });

  const sentences = rows.find((r) => r.instruction_id_list.includes('length_constraints:number_sentences'))!;
  assert.ok(scoreSysIfevalRow(sentences, 'Some answer.').approximate.includes('length_constraints:number_sentences'));
});

test('sentence and word approximations of the NLTK tokenizers', () => {
  assert.equal(countSentencesApprox('Hello world. How are you? Fine!'), 3);
  assert.equal(countSentencesApprox('Mr. Smith met Dr. Jones. They talked.'), 2);
  assert.equal(countSentencesApprox('He said "Stop." Then he left.'), 2);
  assert.equal(countSentencesApprox('What?! No way.'), 2);
  assert.equal(countSentencesApprox('No punctuation\nacross lines'), 1);
  assert.equal(countSentencesApprox('See e.g. this one. And 3.5 percent.'), 2);
  assert.equal(countSentencesApprox(''), 0);
  assert.deepEqual(wordTokensApprox("DON'T stop, NASA-LED (NOW) cannot"), ['DO', "N'T", 'stop', ',', 'NASA-LED', '(', 'NOW', ')', 'can', 'not']);
});
