// @ts-check
/**
 * The inspector page: reads the embedded data (scores per method, tokens, spans, answers), selects keep
 * sets with select.js at the slider's ratio, and draws the text shaded by kept fraction, the layer x head
 * grid, per-span keep rates and the answers. No framework: plain DOM and SVG.
 */
import { decodeGrid } from './grid.js';
import { createSelector, keptCounts, spanKeepRates } from './select.js';

/**
 * @typedef {import('./select.js').NamedRange} NamedRange
 * @typedef {{ ratio: number, question: string, answer: string }} Answer
 * @typedef {{ name: string, describe: string, budget: import('./select.js').BudgetSpec, scores: string,
 *   localScores?: string, answers: Answer[] }} MethodData
 * @typedef {{ format: string, model: string, layers: number, kvHeads: number, tokens: string[],
 *   context: { start: number, end: number }, spans: NamedRange[], ranges: NamedRange[],
 *   protection?: import('./select.js').Protection, protectLabel: string, ratio: number,
 *   answerRatios: number[], questions: string[], methods: MethodData[] }} InspectData
 * @typedef {{ data: MethodData, select: (ratio: number) => Int32Array[][], keep: Int32Array[][],
 *   counts: Int32Array, root: HTMLElement, tokens: HTMLElement[], cells: SVGRectElement[],
 *   stats: HTMLElement, bars: SVGSVGElement, answers: HTMLElement | null }} MethodView
 */

const SVG = 'http://www.w3.org/2000/svg';

const dataNode = document.getElementById('kvlab-data');
if (!dataNode) throw new Error('the page has no kvlab-data block');
/** @type {InspectData} */
const data = JSON.parse(dataNode.textContent ?? '');
const L = data.layers;
const H = data.kvHeads;
const P = data.context.start;
const T = data.context.end - data.context.start;
const pairs = L * H;

/** Which (layer, head) the text is shaded by, or null for the fraction over all pairs. */
/** @type {{ l: number, h: number } | null} */
let focus = null;
let ratio = data.ratio;
/** Token the keyboard cursor is on (absolute row), for the details line. */
let cursor = P;
/** Over all pairs, tokens whose kept fractions differ by at least this much are marked as differing. */
let diffThreshold = 0.5;

/**
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag @param {Record<string, string>} [attrs] @param {(Node | string)[]} [children]
 * @returns {HTMLElementTagNameMap[K]}
 */
function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

/**
 * @param {string} tag @param {Record<string, string | number>} [attrs]
 * @returns {SVGElement}
 */
function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

/** Background for a kept fraction: transparent (evicted everywhere) to saturated blue (kept everywhere). */
function shade(/** @type {number} */ f) {
  return `rgba(37, 99, 235, ${(0.08 + 0.55 * f).toFixed(3)})`;
}

/** Two decimals on the slider's grid of 0.01; three for an opening ratio between its steps (e.g. 0.333). */
function formatRatio(/** @type {number} */ r) {
  return Math.abs(r * 100 - Math.round(r * 100)) < 1e-9 ? r.toFixed(2) : r.toFixed(3);
}

function pct(/** @type {number} */ x) {
  return `${(100 * x).toFixed(1)}%`;
}

/** @type {MethodView[]} */
const views = data.methods.map((m) => {
  const scores = decodeGrid(m.scores, L, H, T);
  const localScores = m.localScores ? decodeGrid(m.localScores, L, H, T) : undefined;
  const selector = createSelector({ budget: m.budget, scores, ranges: data.ranges, protection: data.protection, localScores });
  return buildMethodView(m, (r) => selector.select(r));
});

/**
 * @param {MethodData} m @param {(ratio: number) => Int32Array[][]} select
 * @returns {MethodView}
 */
function buildMethodView(m, select) {
  const root = el('section', { class: 'method', 'aria-label': `method ${m.name}` });
  const stats = el('p', { class: 'stats', 'aria-live': 'polite' });
  const grid = buildGrid(m.name);
  const bars = /** @type {SVGSVGElement} */ (svg('svg', { class: 'bars', role: 'img', 'aria-label': `keep rate per span, ${m.name}` }));
  const text = el('div', { class: 'text', tabindex: '0', role: 'group', 'aria-label': `tokens shaded by kept fraction, ${m.name}; arrow keys move between tokens` });
  const tokens = buildText(text);
  const answers = m.answers.length ? el('div', { class: 'answers' }) : null;
  root.append(
    el('h2', {}, [m.name]),
    el('p', { class: 'describe' }, [m.describe]),
    stats,
    el('div', { class: 'charts' }, [
      el('figure', {}, [grid.svg, el('figcaption', {}, ['kept fraction per layer (rows) and KV head (columns); click a cell to shade the text by that head'])]),
      el('figure', {}, [bars, el('figcaption', {}, ['keep rate per span of the compressible text'])]),
    ]),
  );
  if (answers) root.append(answers);
  root.append(text);
  return { data: m, select, keep: [], counts: new Int32Array(T), root, tokens, cells: grid.cells, stats, bars, answers };
}

/** The layer x head grid: one focusable cell per (layer, head); arrows move, Enter/Space focus, Escape clears. */
function buildGrid(/** @type {string} */ method) {
  const cell = Math.max(6, Math.min(22, Math.floor(170 / L), Math.floor(240 / H)));
  const left = 34;
  const top = 18;
  const root = /** @type {SVGSVGElement} */ (
    svg('svg', { class: 'grid', width: left + H * cell + 4, height: top + L * cell + 4, role: 'grid', 'aria-label': `layer by head grid, ${method}` })
  );
  const headLabel = svg('text', { x: left, y: 11, class: 'axis' });
  headLabel.textContent = 'head →';
  root.append(headLabel);
  /** @type {SVGRectElement[]} */
  const cells = [];
  for (let l = 0; l < L; l++) {
    if (L <= 16 || l % 4 === 0) {
      const t = svg('text', { x: left - 4, y: top + l * cell + cell * 0.7, class: 'axis', 'text-anchor': 'end' });
      t.textContent = `L${l}`;
      root.append(t);
    }
    for (let h = 0; h < H; h++) {
      const r = /** @type {SVGRectElement} */ (
        svg('rect', { x: left + h * cell, y: top + l * cell, width: cell - 1, height: cell - 1, class: 'cell', tabindex: l === 0 && h === 0 ? 0 : -1, role: 'gridcell', 'data-layer': l, 'data-head': h })
      );
      r.append(svg('title'));
      r.addEventListener('click', () => setFocus(l, h));
      r.addEventListener('keydown', (e) => gridKey(e, l, h, cells));
      cells.push(r);
      root.append(r);
    }
  }
  return { svg: root, cells };
}

/** @param {KeyboardEvent} e @param {number} l @param {number} h @param {SVGRectElement[]} cells */
function gridKey(e, l, h, cells) {
  const moves = /** @type {Record<string, [number, number]>} */ ({ ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] });
  if (moves[e.key]) {
    const [dl, dh] = moves[e.key];
    const nl = Math.max(0, Math.min(L - 1, l + dl));
    const nh = Math.max(0, Math.min(H - 1, h + dh));
    cells[l * H + h].setAttribute('tabindex', '-1');
    const next = cells[nl * H + nh];
    next.setAttribute('tabindex', '0');
    next.focus();
    e.preventDefault();
  } else if (e.key === 'Enter' || e.key === ' ') {
    setFocus(l, h);
    e.preventDefault();
  } else if (e.key === 'Escape') {
    setFocus(null, null);
  }
}

/** The prompt's tokens in their spans; each span starts with a small tag naming it. */
function buildText(/** @type {HTMLElement} */ container) {
  /** @type {HTMLElement[]} */
  const tokens = [];
  for (const span of data.spans) {
    const kind = span.name.split(':')[0];
    const box = el('span', { class: `span span-${kind}`, 'data-span': span.name });
    box.append(el('span', { class: 'span-tag', 'aria-hidden': 'true' }, [span.name]));
    for (let p = span.start; p < span.end; p++) {
      const inContext = p >= P && p < P + T;
      const t = el('span', { class: inContext ? 'tok' : 'tok fixed', 'data-pos': String(p) }, [data.tokens[p] ?? '']);
      t.addEventListener('mouseenter', () => showDetails(p));
      tokens[p] = t;
      box.append(t);
    }
    container.append(box);
  }
  container.addEventListener('keydown', (e) => {
    const step = e.key === 'ArrowRight' ? 1 : e.key === 'ArrowLeft' ? -1 : 0;
    if (!step) return;
    cursor = Math.max(0, Math.min(data.tokens.length - 1, cursor + step));
    for (const v of views) v.tokens.forEach((t, p) => t.classList.toggle('cursor', p === cursor));
    tokens[cursor]?.scrollIntoView({ block: 'nearest' });
    showDetails(cursor);
    e.preventDefault();
  });
  return tokens;
}

/** Kept state of span row j in one method's keep sets, for the text's current view (all pairs or one head). */
function keptOf(/** @type {MethodView} */ v, /** @type {number} */ j) {
  if (!focus) return { kept: v.counts[j], of: pairs };
  const rows = v.keep[focus.l][focus.h];
  return { kept: binaryHas(rows, j) ? 1 : 0, of: 1 };
}

function binaryHas(/** @type {Int32Array} */ rows, /** @type {number} */ j) {
  let lo = 0;
  let hi = rows.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (rows[mid] === j) return true;
    if (rows[mid] < j) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
}

function showDetails(/** @type {number} */ p) {
  const details = document.getElementById('details');
  if (!details) return;
  const where = data.spans.find((s) => p >= s.start && p < s.end)?.name ?? '';
  const parts = [`token ${p} ${JSON.stringify(data.tokens[p] ?? '')} (${where})`];
  for (const v of views) {
    if (p < P || p >= P + T) parts.push(`${v.data.name}: never evicted (template prefix)`);
    else {
      const k = keptOf(v, p - P);
      parts.push(`${v.data.name}: kept by ${k.kept} of ${k.of} ${focus ? `(layer ${focus.l}, head ${focus.h})` : '(layer, head) pairs'}`);
    }
  }
  details.textContent = parts.join(' · ');
}

/** Selects at the current ratio and redraws everything that depends on it. */
function update() {
  for (const v of views) {
    v.keep = v.select(ratio);
    v.counts = keptCounts(v.keep, T);
  }
  const output = document.getElementById('ratio-value');
  if (output) output.textContent = formatRatio(ratio);
  const focusNote = document.getElementById('focus-note');
  if (focusNote) focusNote.textContent = focus ? `text shaded by layer ${focus.l}, head ${focus.h} alone` : 'text shaded by the fraction of all (layer, head) pairs';
  const clear = /** @type {HTMLButtonElement | null} */ (document.getElementById('clear-focus'));
  if (clear) clear.disabled = !focus;
  const differ = views.length === 2 ? diffRows(views[0], views[1]) : new Uint8Array(T);
  let nDiffer = 0;
  for (let j = 0; j < T; j++) nDiffer += differ[j];
  const diffNote = document.getElementById('diff-note');
  if (diffNote) {
    const rule = focus ? 'kept by one, evicted by the other' : `kept fractions apart by at least ${Math.round(diffThreshold * 100)}% of pairs`;
    diffNote.textContent = views.length === 2 ? `${nDiffer} of ${T} tokens differ between ${views[0].data.name} and ${views[1].data.name} (${rule}; underlined)` : '';
  }
  const diffControl = document.getElementById('diff-control');
  if (diffControl) diffControl.hidden = views.length !== 2;
  for (const v of views) drawMethod(v, differ);
}

/**
 * Rows the two methods keep differently in the current view: with one head focused, kept by one and not
 * the other; over all pairs, kept fractions apart by at least the threshold (a share of the pairs).
 */
function diffRows(/** @type {MethodView} */ a, /** @type {MethodView} */ b) {
  const out = new Uint8Array(T);
  for (let j = 0; j < T; j++) {
    const ka = keptOf(a, j);
    const kb = keptOf(b, j);
    out[j] = Math.abs(ka.kept / ka.of - kb.kept / kb.of) >= (focus ? 1 : diffThreshold) - 1e-9 ? 1 : 0;
  }
  return out;
}

function drawMethod(/** @type {MethodView} */ v, /** @type {Uint8Array} */ differ) {
  let keptPairs = 0;
  let keptTokens = 0;
  for (let j = 0; j < T; j++) {
    keptPairs += v.counts[j];
    if (v.counts[j] > 0) keptTokens++;
  }
  v.stats.replaceChildren(
    'KV pairs kept: ',
    el('strong', { class: 'kept-pairs' }, [String(keptPairs)]),
    ` of ${pairs * T} (${pct(T ? keptPairs / (pairs * T) : 1)}) · tokens kept by some head: `,
    el('strong', { class: 'kept-tokens' }, [String(keptTokens)]),
    ` of ${T}`,
  );
  for (let p = 0; p < v.tokens.length; p++) {
    const t = v.tokens[p];
    if (p < P || p >= P + T) {
      t.title = `token ${p}: outside the compressible span, never evicted`;
      continue;
    }
    const j = p - P;
    const k = keptOf(v, j);
    t.style.background = shade(k.kept / k.of);
    t.dataset.kept = String(k.kept);
    t.dataset.of = String(k.of);
    t.classList.toggle('evicted', k.kept === 0);
    t.classList.toggle('differs', differ[j] === 1);
    t.title = `token ${p}: kept by ${k.kept} of ${k.of} ${focus ? `(layer ${focus.l}, head ${focus.h})` : '(layer, head) pairs'}`;
  }
  v.cells.forEach((c, i) => {
    const l = Math.floor(i / H);
    const h = i % H;
    const f = T ? v.keep[l][h].length / T : 1;
    c.style.fill = `rgba(37, 99, 235, ${(0.06 + 0.94 * f).toFixed(3)})`;
    c.classList.toggle('focused', !!focus && focus.l === l && focus.h === h);
    c.setAttribute('aria-selected', String(!!focus && focus.l === l && focus.h === h));
    const title = c.firstChild;
    if (title) title.textContent = `layer ${l}, head ${h}: keeps ${v.keep[l][h].length} of ${T} (${pct(f)})`;
    c.setAttribute('aria-label', `layer ${l}, head ${h}, keeps ${pct(f)}`);
  });
  drawBars(v);
  if (v.answers) drawAnswers(v);
}

/** Horizontal bars: mean kept fraction of each span name, over its rows and every (layer, head). */
function drawBars(/** @type {MethodView} */ v) {
  const rates = spanKeepRates(v.keep, data.ranges);
  const names = Object.keys(rates);
  const rowH = 18;
  const labelW = 96;
  const barW = 140;
  v.bars.setAttribute('width', String(labelW + barW + 56));
  v.bars.setAttribute('height', String(names.length * rowH + 6));
  v.bars.replaceChildren();
  names.forEach((name, i) => {
    const y = 3 + i * rowH;
    const label = svg('text', { x: labelW - 6, y: y + 12, 'text-anchor': 'end', class: 'axis' });
    label.textContent = name.length > 16 ? `${name.slice(0, 15)}…` : name;
    const track = svg('rect', { x: labelW, y: y + 2, width: barW, height: rowH - 6, class: 'track' });
    const bar = svg('rect', { x: labelW, y: y + 2, width: (barW * rates[name]).toFixed(1), height: rowH - 6, class: 'bar' });
    const value = svg('text', { x: labelW + barW + 6, y: y + 12, class: 'axis value', 'data-span': name });
    value.textContent = pct(rates[name]);
    v.bars.append(label, track, bar, value);
  });
}

/** The engine's answers at each listed ratio; the ratio nearest the slider's is marked. */
function drawAnswers(/** @type {MethodView} */ v) {
  if (!v.answers) return;
  const nearest = data.answerRatios.reduce((best, r) => (Math.abs(r - ratio) < Math.abs(best - ratio) ? r : best), data.answerRatios[0]);
  const table = el('table', {}, [el('caption', {}, ['answers (computed by the engine at the listed ratios)'])]);
  table.append(el('tr', {}, [el('th', { scope: 'col' }, ['ratio']), el('th', { scope: 'col' }, ['question']), el('th', { scope: 'col' }, ['answer'])]));
  for (const a of v.data.answers) {
    const shown = a.ratio === nearest;
    const row = el('tr', shown ? { class: 'shown' } : {}, [
      el('td', {}, [`${a.ratio}${shown ? (a.ratio === ratio ? ' (shown)' : ' (nearest)') : ''}`]),
      el('td', {}, [a.question]),
      el('td', {}, [a.answer]),
    ]);
    table.append(row);
  }
  v.answers.replaceChildren(table);
}

/** @param {number | null} l @param {number | null} h */
function setFocus(l, h) {
  focus = l === null || h === null || (focus && focus.l === l && focus.h === h) ? null : { l, h };
  update();
  showDetails(cursor);
}

const slider = /** @type {HTMLInputElement | null} */ (document.getElementById('ratio'));
if (slider) {
  slider.value = String(ratio);
  slider.addEventListener('input', () => {
    ratio = Number(slider.value);
    update();
    showDetails(cursor);
  });
}
const threshold = /** @type {HTMLInputElement | null} */ (document.getElementById('diff-threshold'));
threshold?.addEventListener('input', () => {
  const v = Number(threshold.value);
  if (v >= 1 && v <= 100) {
    diffThreshold = v / 100;
    update();
  }
});
document.getElementById('clear-focus')?.addEventListener('click', () => setFocus(null, null));
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && focus) setFocus(null, null);
});
const main = document.getElementById('methods');
if (main) {
  main.classList.toggle('two', views.length === 2);
  for (const v of views) main.append(v.root);
}
update();
showDetails(cursor);
document.body.dataset.ready = 'true';
