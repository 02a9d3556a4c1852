/**
 * Python `str` and `re` semantics that the reference scorers (IFEval, the dev-set scripts) rely on, where
 * JavaScript's built-ins differ: `trim()` strips a slightly different whitespace set than `str.strip()`,
 * JS `\s`, `\w`, `\b` and `.` are not Python's, and JS has no `isupper()` / `islower()`.
 */

/** The characters for which `str.isspace()` is true: what `strip()`, `split()` and re's `\s` use. */
const SPACE_CHARS = '\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';

/** Regex source (needs the `u` flag) for Python re's `\s` on str patterns. */
export const PY_SPACE = `[${SPACE_CHARS}]`;
/** Regex source (needs the `u` flag) for Python re's `\S`. */
export const PY_NON_SPACE = `[^${SPACE_CHARS}]`;
/** Regex source (needs the `u` flag) for Python re's `\w` on str patterns: str.isalnum() characters and `_`. */
export const PY_WORD = '[\\p{L}\\p{N}_]';
/** Regex source for Python re's `.` without DOTALL: anything but `\n` (JS `.` also refuses `\r`, U+2028, U+2029). */
export const PY_DOT = '[^\\n]';
/** Zero-width regex source for `^` under re.MULTILINE: start of text or just after `\n`. */
export const PY_LINE_START = '(?<![^\\n])';
/** Zero-width regex source for `$` under re.MULTILINE: end of text or just before `\n`. */
export const PY_LINE_END = '(?![^\\n])';
/** Zero-width regex source (needs the `u` flag) for Python re's Unicode `\b`. */
export const PY_WORD_BOUNDARY = `(?:(?<=${PY_WORD})(?!${PY_WORD})|(?<!${PY_WORD})(?=${PY_WORD}))`;

const LEADING_SPACE = new RegExp(`^${PY_SPACE}+`, 'u');
const TRAILING_SPACE = new RegExp(`${PY_SPACE}+$`, 'u');
const SPACE_RUN = new RegExp(`${PY_SPACE}+`, 'u');

/** `s.lstrip(chars)`; with no chars, Python whitespace. */
export function pyLstrip(s: string, chars?: string): string {
  if (chars === undefined) return s.replace(LEADING_SPACE, '');
  const set = new Set(chars);
  const cps = [...s];
  let i = 0;
  while (i < cps.length && set.has(cps[i]!)) i++;
  return cps.slice(i).join('');
}

/** `s.rstrip(chars)`; with no chars, Python whitespace. */
export function pyRstrip(s: string, chars?: string): string {
  if (chars === undefined) return s.replace(TRAILING_SPACE, '');
  const set = new Set(chars);
  const cps = [...s];
  let j = cps.length;
  while (j > 0 && set.has(cps[j - 1]!)) j--;
  return cps.slice(0, j).join('');
}

/** `s.strip(chars)`; with no chars, Python whitespace. */
export function pyStrip(s: string, chars?: string): string {
  return pyRstrip(pyLstrip(s, chars), chars);
}

/** `s.split()` with no separator: runs of Python whitespace, no empty pieces. */
export function pySplit(s: string): string[] {
  const t = pyStrip(s);
  return t ? t.split(SPACE_RUN) : [];
}

const LOWER = /[\p{Lowercase}]/u;
const UPPER = /[\p{Uppercase}]/u;
const TITLE = /\p{Lt}/u;

/** `s.isupper()`: at least one cased character and none lowercase or titlecase. */
export function pyIsUpper(s: string): boolean {
  let cased = false;
  for (const ch of s) {
    if (LOWER.test(ch) || TITLE.test(ch)) return false;
    if (UPPER.test(ch)) cased = true;
  }
  return cased;
}

/** `s.islower()`: at least one cased character and none uppercase or titlecase. */
export function pyIsLower(s: string): boolean {
  let cased = false;
  for (const ch of s) {
    if (UPPER.test(ch) || TITLE.test(ch)) return false;
    if (LOWER.test(ch)) cased = true;
  }
  return cased;
}

/** Escapes a string for literal use inside a RegExp (valid with or without the `u` flag). */
export function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}
