const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf', '#000000', '#aec7e8'];
const W = 760;
const BASE_H = 440;
const M = { left: 64, right: 230, top: 40, bottom: 56 };

export interface LineSeries {
  name: string;
  points: [number, number][];
  /** Series sharing a group share a color (e.g. one method under several protections). */
  group?: string;
  /** Dash pattern index: 0 solid, then dashed, dotted, dash-dot. */
  dash?: number;
}

const DASHES = ['', '6 4', '2 3', '8 3 2 3'];

export interface LinePlotSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  series: LineSeries[];
  xDomain?: [number, number];
  yDomain?: [number, number];
}

export function escapeXml(s: string): string {
  return s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;').replaceAll('"', '&quot;');
}

function ticks(lo: number, hi: number, n = 5): number[] {
  if (hi === lo) return [lo];
  const step = (hi - lo) / n;
  return Array.from({ length: n + 1 }, (_, i) => lo + i * step);
}

function frame(title: string, xLabel: string, yLabel: string, body: string[], H = BASE_H): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${(M.left + W - M.right) / 2}" y="22" text-anchor="middle" font-size="15">${escapeXml(title)}</text>`,
    `<text x="${(M.left + W - M.right) / 2}" y="${H - 12}" text-anchor="middle">${escapeXml(xLabel)}</text>`,
    `<text transform="translate(16 ${(M.top + H - M.bottom) / 2}) rotate(-90)" text-anchor="middle">${escapeXml(yLabel)}</text>`,
    ...body,
    '</svg>',
  ].join('\n');
}

/** Lines with markers, axes, ticks and a legend; standalone SVG. */
export function linePlot(spec: LinePlotSpec): string {
  const H = Math.max(BASE_H, M.top + 20 + spec.series.length * 18 + M.bottom);
  const xs = spec.series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = spec.series.flatMap((s) => s.points.map((p) => p[1]));
  const [x0, x1] = spec.xDomain ?? [Math.min(...xs, 0), Math.max(...xs, 1)];
  const [y0, y1] = spec.yDomain ?? [Math.min(...ys, 0), Math.max(...ys, 1)];
  const px = (x: number) => M.left + ((x - x0) / (x1 - x0 || 1)) * (W - M.left - M.right);
  const py = (y: number) => H - M.bottom - ((y - y0) / (y1 - y0 || 1)) * (H - M.top - M.bottom);
  const body: string[] = [
    `<line x1="${M.left}" y1="${H - M.bottom}" x2="${W - M.right}" y2="${H - M.bottom}" stroke="black"/>`,
    `<line x1="${M.left}" y1="${M.top}" x2="${M.left}" y2="${H - M.bottom}" stroke="black"/>`,
  ];
  for (const t of ticks(x0, x1)) body.push(`<text x="${px(t).toFixed(1)}" y="${H - M.bottom + 16}" text-anchor="middle">${+t.toFixed(2)}</text>`);
  for (const t of ticks(y0, y1)) {
    body.push(`<line x1="${M.left}" y1="${py(t).toFixed(1)}" x2="${W - M.right}" y2="${py(t).toFixed(1)}" stroke="#eee"/>`);
    body.push(`<text x="${M.left - 6}" y="${(py(t) + 4).toFixed(1)}" text-anchor="end">${+t.toFixed(2)}</text>`);
  }
  const groups = [...new Set(spec.series.map((s) => s.group ?? s.name))];
  spec.series.forEach((s, i) => {
    const color = COLORS[groups.indexOf(s.group ?? s.name) % COLORS.length]!;
    const dash = DASHES[(s.dash ?? 0) % DASHES.length];
    const dashAttr = dash ? ` stroke-dasharray="${dash}"` : '';
    const pts = [...s.points].sort((a, b) => a[0] - b[0]);
    body.push(`<polyline fill="none" stroke="${color}" stroke-width="2"${dashAttr} points="${pts.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' ')}"/>`);
    for (const [x, y] of pts) body.push(`<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="3" fill="${color}"/>`);
    const ly = M.top + 10 + i * 18;
    body.push(`<line x1="${W - M.right + 12}" y1="${ly}" x2="${W - M.right + 34}" y2="${ly}" stroke="${color}" stroke-width="2"${dashAttr}/>`);
    body.push(`<text x="${W - M.right + 40}" y="${ly + 4}">${escapeXml(s.name)}</text>`);
  });
  return frame(spec.title, spec.xLabel, spec.yLabel, body, H);
}

export interface BarPlotSpec {
  title: string;
  yLabel: string;
  /** Category labels along the x axis (e.g. methods). */
  groups: string[];
  /** One bar per series inside each group (e.g. spans). */
  series: string[];
  /** values[g][s] */
  values: number[][];
  yDomain?: [number, number];
}

/** Grouped bars with a legend; standalone SVG. */
export function barPlot(spec: BarPlotSpec): string {
  const all = spec.values.flat();
  const [y0, y1] = spec.yDomain ?? [Math.min(0, ...all), Math.max(1e-9, ...all)];
  const H = Math.max(BASE_H, M.top + 20 + spec.series.length * 18 + M.bottom);
  const py = (y: number) => H - M.bottom - ((y - y0) / (y1 - y0 || 1)) * (H - M.top - M.bottom);
  const gw = (W - M.left - M.right) / Math.max(1, spec.groups.length);
  const bw = (gw * 0.8) / Math.max(1, spec.series.length);
  const body: string[] = [
    `<line x1="${M.left}" y1="${H - M.bottom}" x2="${W - M.right}" y2="${H - M.bottom}" stroke="black"/>`,
    `<line x1="${M.left}" y1="${M.top}" x2="${M.left}" y2="${H - M.bottom}" stroke="black"/>`,
  ];
  for (const t of ticks(y0, y1)) body.push(`<text x="${M.left - 6}" y="${(py(t) + 4).toFixed(1)}" text-anchor="end">${+t.toFixed(2)}</text>`);
  spec.groups.forEach((g, gi) => {
    spec.series.forEach((_, si) => {
      const v = spec.values[gi]?.[si] ?? 0;
      const x = M.left + gi * gw + gw * 0.1 + si * bw;
      body.push(`<rect x="${x.toFixed(1)}" y="${py(Math.max(v, y0)).toFixed(1)}" width="${(bw - 1).toFixed(1)}" height="${(py(y0) - py(Math.max(v, y0))).toFixed(1)}" fill="${COLORS[si % COLORS.length]}"/>`);
    });
    body.push(`<text x="${(M.left + gi * gw + gw / 2).toFixed(1)}" y="${H - M.bottom + 16}" text-anchor="middle">${escapeXml(g)}</text>`);
  });
  spec.series.forEach((s, si) => {
    const ly = M.top + 10 + si * 18;
    body.push(`<rect x="${W - M.right + 12}" y="${ly - 6}" width="14" height="12" fill="${COLORS[si % COLORS.length]}"/>`);
    body.push(`<text x="${W - M.right + 32}" y="${ly + 4}">${escapeXml(s)}</text>`);
  });
  return frame(spec.title, '', spec.yLabel, body, H);
}
