import assert from 'node:assert/strict';
import { test } from 'node:test';
import { barPlot, escapeXml, linePlot, niceTicks } from '../src/eval/svg-plot.ts';

const ENTITY = /&(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);/g;

/** A small XML well-formedness check: one root, balanced tags, quoted unique attributes, escaped text. */
function assertWellFormedXml(xml: string): { root: string; elements: { name: string; attrs: Record<string, string> }[]; texts: string[] } {
  const stack: string[] = [];
  const elements: { name: string; attrs: Record<string, string> }[] = [];
  const texts: string[] = [];
  let root = '';
  let i = 0;
  while (i < xml.length) {
    const lt = xml.indexOf('<', i);
    const text = xml.slice(i, lt < 0 ? xml.length : lt);
    assert.ok(!/&/.test(text.replace(ENTITY, '')), `unescaped & in text: ${text}`);
    assert.ok(!text.includes('>'), `raw > in text: ${text}`);
    if (text.trim()) {
      assert.ok(stack.length > 0, `text outside the root: ${text}`);
      texts.push(text.replace(ENTITY, (e) => ({ '&amp;': '&', '&lt;': '<', '&gt;': '>', '&quot;': '"', '&apos;': "'" })[e] ?? e));
    }
    if (lt < 0) break;
    const gt = xml.indexOf('>', lt);
    assert.ok(gt > lt, 'unclosed tag');
    const tag = xml.slice(lt + 1, gt);
    i = gt + 1;
    if (tag.startsWith('/')) {
      assert.equal(tag.slice(1), stack.pop(), 'mismatched closing tag');
      continue;
    }
    const m = /^([A-Za-z][\w:.-]*)((?:\s+[A-Za-z_:][\w:.-]*="[^"<]*")*)\s*(\/?)$/.exec(tag);
    assert.ok(m, `malformed tag <${tag}>`);
    const attrs: Record<string, string> = {};
    for (const a of m[2]!.matchAll(/([A-Za-z_:][\w:.-]*)="([^"]*)"/g)) {
      assert.ok(!(a[1]! in attrs), `duplicate attribute ${a[1]}`);
      assert.ok(!/&/.test(a[2]!.replace(ENTITY, '')), `unescaped & in attribute ${a[1]}`);
      attrs[a[1]!] = a[2]!;
    }
    if (stack.length === 0) {
      assert.equal(root, '', 'more than one root element');
      root = m[1]!;
    }
    elements.push({ name: m[1]!, attrs });
    if (!m[3]) stack.push(m[1]!);
  }
  assert.deepEqual(stack, [], 'unclosed elements');
  return { root, elements, texts };
}

test('line plot: standalone SVG with axes, ticks, legend, escaped text', () => {
  const svg = linePlot({
    title: 'accuracy <vs> kept ratio & "more"',
    xLabel: 'ratio',
    yLabel: 'accuracy',
    series: [
      { name: 'kvzip', points: [[1, 0.9], [0.1, 0.2], [0.5, 0.6]] },
      { name: 'snapkv <fair>', points: [[0.1, 0.1], [1, 0.8]] },
      { name: 'h2o', points: [[0.1, 0.05], [0.5, Number.NaN], [1, 0.7]] },
    ],
    xDomain: [0, 1],
    yDomain: [0, 1],
  });
  const doc = assertWellFormedXml(svg);
  assert.equal(doc.root, 'svg');
  assert.equal(doc.elements[0]!.attrs.xmlns, 'http://www.w3.org/2000/svg');
  for (const t of ['accuracy <vs> kept ratio & "more"', 'ratio', 'accuracy', 'kvzip', 'snapkv <fair>', 'h2o', '0', '0.4', '1']) assert.ok(doc.texts.includes(t), `missing text ${t}`);
  const lines = doc.elements.filter((e) => e.name === 'polyline');
  // h2o's NaN splits its line in two one-point runs, which draw no segment.
  assert.equal(lines.length, 2);
  assert.equal(new Set(lines.map((l) => l.attrs.stroke)).size, 2);
  // Points are drawn in x order.
  const xs = lines[0]!.attrs.points!.split(' ').map((p) => Number(p.split(',')[0]));
  assert.deepEqual([...xs].sort((a, b) => a - b), xs);
  // Distinct markers: circles for the first series, squares for the second, triangles for the third.
  assert.ok(doc.elements.some((e) => e.name === 'circle') && doc.elements.some((e) => e.name === 'rect' && e.attrs.width === '7'));
  assert.ok(doc.elements.some((e) => e.name === 'path' && e.attrs.fill));
});

test('line plot: a group shares a color, dashes tell its members apart', () => {
  const svg = linePlot({
    title: 't',
    xLabel: 'x',
    yLabel: 'y',
    series: [
      { name: 'snapkv', group: 'snapkv', dash: 0, points: [[0, 0], [1, 1]] },
      { name: 'snapkv + fair', group: 'snapkv', dash: 1, points: [[0, 0.5], [1, 1]] },
      { name: 'kvzip', group: 'kvzip', dash: 0, points: [[0, 0.2], [1, 1]] },
    ],
  });
  const lines = assertWellFormedXml(svg).elements.filter((e) => e.name === 'polyline');
  assert.equal(lines[0]!.attrs.stroke, lines[1]!.attrs.stroke);
  assert.notEqual(lines[0]!.attrs.stroke, lines[2]!.attrs.stroke);
  assert.equal(lines[0]!.attrs['stroke-dasharray'], undefined);
  assert.equal(lines[1]!.attrs['stroke-dasharray'], '6 4');
});

test('line plot with no points or one value still renders', () => {
  assertWellFormedXml(linePlot({ title: 'empty', xLabel: 'x', yLabel: 'y', series: [] }));
  assertWellFormedXml(linePlot({ title: 'flat', xLabel: 'x', yLabel: 'y', series: [{ name: 'a', points: [[2, 3]] }] }));
  assert.throws(() => linePlot({ title: 't', xLabel: 'x', yLabel: 'y', series: [], xDomain: [1, 1] }), RangeError);
});

test('grouped bar plot: one bar per series in each group, legend, long labels rotated', () => {
  const svg = barPlot({
    title: 'Keep rate per span',
    yLabel: 'fraction kept',
    groups: ['snapkv', 'kvzip'],
    series: ['defense', 'directive', 'template'],
    values: [
      [0.2, 0.6, 1],
      [0.5, Number.NaN, 0.9],
    ],
    yDomain: [0, 1],
  });
  const doc = assertWellFormedXml(svg);
  const bars = doc.elements.filter((e) => e.name === 'rect' && e.attrs.width !== '14' && e.attrs.fill !== 'white');
  assert.equal(bars.length, 5);
  for (const t of ['defense', 'directive', 'template', 'snapkv', 'kvzip', 'Keep rate per span']) assert.ok(doc.texts.includes(t));
  const rotated = barPlot({ title: 't', yLabel: 'y', groups: ['a very long method name'], series: ['s'], values: [[-0.5]] });
  assert.match(rotated, /rotate\(-30\)/);
  assertWellFormedXml(rotated);
  assert.throws(() => barPlot({ title: 't', yLabel: 'y', groups: ['a', 'b'], series: ['s'], values: [[1]] }), /2 rows \(groups\) of 1 values/);
});

test('escaping and ticks', () => {
  assert.equal(escapeXml(`a<b>&"c"'\u0001`), 'a&lt;b&gt;&amp;&quot;c&quot;&apos;');
  assert.deepEqual(niceTicks(0, 1), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(0.05, 0.93), [0.2, 0.4, 0.6, 0.8]);
  assert.deepEqual(niceTicks(0, 100, 4), [0, 25, 50, 75, 100]);
  assert.deepEqual(niceTicks(-1, 1, 4), [-1, -0.5, 0, 0.5, 1]);
  assert.deepEqual(niceTicks(3, 3), [3]);
});
