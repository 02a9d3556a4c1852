/**
 * Dependency-free SVG charts for the evaluation reports: line plots (metric vs kept ratio, one series per
 * method) and grouped bar plots (keep rate per span per method). The output is a standalone SVG document.
 */

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22', '#000000', '#aec7e8'];
const DASHES = ['', '6 4', '2 3', '8 3 2 3'];
const MARKERS = ['circle', 'square', 'triangle', 'diamond', 'triangle-down', 'cross', 'plus'] as const;
type Marker = (typeof MARKERS)[number];

const WIDTH = 760;
const BASE_HEIGHT = 440;
const LEGEND_WIDTH = 220;
const LEGEND_ROW = 18;
const MARGIN = { left: 70, top: 40, bottom: 56 };

/** Escapes text for XML content and attribute values; drops characters XML 1.0 cannot hold. */
export function escapeXml(s: string): string {
  return s
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/g, '')
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&apos;');
}

/** Tick values (1-2-2.5-5 steps) covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, target = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / target;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw * (1 - 1e-9)) ?? 10 * power;
  const out: number[] = [];
  for (let k = Math.ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k++) out.push(Number((k * step).toPrecision(12)));
  return out;
}

function fmt(v: number): string {
  return String(Number(v.toPrecision(6)));
}

function num(v: number): string {
  return v.toFixed(1);
}

function domain(values: number[], given: [number, number] | undefined, includeZero: boolean): [number, number] {
  if (given) {
    if (!(given[1] > given[0])) throw new RangeError(`plot domain [${given[0]}, ${given[1]}] must be increasing`);
    return given;
  }
  const finite = values.filter(Number.isFinite);
  if (includeZero) finite.push(0);
  if (finite.length === 0) return [0, 1];
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (lo === hi) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  return [lo, hi];
}

function markerSvg(shape: Marker, x: number, y: number, color: string): string {
  const r = 3.5;
  switch (shape) {
    case 'circle':
      return `<circle cx="${num(x)}" cy="${num(y)}" r="${r}" fill="${color}"/>`;
    case 'square':
      return `<rect x="${num(x - r)}" y="${num(y - r)}" width="${2 * r}" height="${2 * r}" fill="${color}"/>`;
    case 'triangle':
      return `<path d="M${num(x)} ${num(y - r - 1)}L${num(x + r + 0.5)} ${num(y + r)}L${num(x - r - 0.5)} ${num(y + r)}Z" fill="${color}"/>`;
    case 'triangle-down':
      return `<path d="M${num(x)} ${num(y + r + 1)}L${num(x + r + 0.5)} ${num(y - r)}L${num(x - r - 0.5)} ${num(y - r)}Z" fill="${color}"/>`;
    case 'diamond':
      return `<path d="M${num(x)} ${num(y - r - 1)}L${num(x + r + 1)} ${num(y)}L${num(x)} ${num(y + r + 1)}L${num(x - r - 1)} ${num(y)}Z" fill="${color}"/>`;
    case 'cross':
      return `<path d="M${num(x - r)} ${num(y - r)}L${num(x + r)} ${num(y + r)}M${num(x - r)} ${num(y + r)}L${num(x + r)} ${num(y - r)}" stroke="${color}" stroke-width="2"/>`;
    case 'plus':
      return `<path d="M${num(x - r - 1)} ${num(y)}L${num(x + r + 1)} ${num(y)}M${num(x)} ${num(y - r - 1)}L${num(x)} ${num(y + r + 1)}" stroke="${color}" stroke-width="2"/>`;
  }
}

interface Frame {
  width: number;
  height: number;
  plot: { left: number; right: number; top: number; bottom: number };
}

function frame(rows: number, extraBottom = 0): Frame {
  const height = Math.max(BASE_HEIGHT, MARGIN.top + 20 + rows * LEGEND_ROW + MARGIN.bottom) + extraBottom;
  return { width: WIDTH, height, plot: { left: MARGIN.left, right: WIDTH - LEGEND_WIDTH, top: MARGIN.top, bottom: height - MARGIN.bottom - extraBottom } };
}

function svgDocument(f: Frame, title: string, xLabel: string, yLabel: string, body: string[]): string {
  const cx = (f.plot.left + f.plot.right) / 2;
  const cy = (f.plot.top + f.plot.bottom) / 2;
  const lines = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${f.width}" height="${f.height}" viewBox="0 0 ${f.width} ${f.height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${f.width}" height="${f.height}" fill="white"/>`,
    `<text x="${num(cx)}" y="22" text-anchor="middle" font-size="15">${escapeXml(title)}</text>`,
  ];
  if (xLabel) lines.push(`<text x="${num(cx)}" y="${f.height - 12}" text-anchor="middle">${escapeXml(xLabel)}</text>`);
  if (yLabel) lines.push(`<text transform="translate(16 ${num(cy)}) rotate(-90)" text-anchor="middle">${escapeXml(yLabel)}</text>`);
  return `${[...lines, ...body, '</svg>'].join('\n')}\n`;
}

function axes(f: Frame, yTicks: number[], py: (y: number) => number): string[] {
  const { left, right, top, bottom } = f.plot;
  const out: string[] = [];
  for (const t of yTicks) {
    out.push(`<line x1="${left}" y1="${num(py(t))}" x2="${right}" y2="${num(py(t))}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${left - 6}" y="${num(py(t) + 4)}" text-anchor="end">${fmt(t)}</text>`);
  }
  out.push(`<line x1="${left}" y1="${bottom}" x2="${right}" y2="${bottom}" stroke="black"/>`);
  out.push(`<line x1="${left}" y1="${top}" x2="${left}" y2="${bottom}" stroke="black"/>`);
  return out;
}

export interface LineSeries {
  name: string;
  points: [number, number][];
  /** Series sharing a group share a color and marker (e.g. one method under several protections). */
  group?: string;
  /** Dash pattern index: 0 solid, then dashed, dotted, dash-dot. */
  dash?: number;
}

export interface LinePlotSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  series: LineSeries[];
  xDomain?: [number, number];
  yDomain?: [number, number];
}

/**
 * Lines with markers, axes, ticks and a legend. Each group (default: each series) gets its own color and
 * marker; points are drawn in x order; non-finite points leave a gap.
 */
export function linePlot(spec: LinePlotSpec): string {
  const f = frame(spec.series.length);
  const { left, right, top, bottom } = f.plot;
  const [x0, x1] = domain(spec.series.flatMap((s) => s.points.map((p) => p[0])), spec.xDomain, false);
  const [y0, y1] = domain(spec.series.flatMap((s) => s.points.map((p) => p[1])), spec.yDomain, false);
  const px = (x: number) => left + ((x - x0) / (x1 - x0)) * (right - left);
  const py = (y: number) => bottom - ((y - y0) / (y1 - y0)) * (bottom - top);
  const body = [
    `<defs><clipPath id="plot-area"><rect x="${left - 6}" y="${top - 6}" width="${right - left + 12}" height="${bottom - top + 12}"/></clipPath></defs>`,
    ...axes(f, niceTicks(y0, y1), py),
  ];
  for (const t of niceTicks(x0, x1, 6)) {
    body.push(`<line x1="${num(px(t))}" y1="${bottom}" x2="${num(px(t))}" y2="${bottom + 4}" stroke="black"/>`);
    body.push(`<text x="${num(px(t))}" y="${bottom + 16}" text-anchor="middle">${fmt(t)}</text>`);
  }
  const groups = [...new Set(spec.series.map((s) => s.group ?? s.name))];
  body.push('<g clip-path="url(#plot-area)">');
  const legend: string[] = [];
  spec.series.forEach((s, i) => {
    const g = groups.indexOf(s.group ?? s.name);
    const color = COLORS[g % COLORS.length]!;
    const marker = MARKERS[g % MARKERS.length]!;
    const dash = DASHES[(s.dash ?? 0) % DASHES.length];
    const dashAttr = dash ? ` stroke-dasharray="${dash}"` : '';
    const pts = [...s.points].sort((a, b) => a[0] - b[0]);
    let run: string[] = [];
    const flush = () => {
      if (run.length > 1) body.push(`<polyline fill="none" stroke="${color}" stroke-width="2"${dashAttr} points="${run.join(' ')}"/>`);
      run = [];
    };
    for (const [x, y] of pts) {
      if (!Number.isFinite(x) || !Number.isFinite(y)) {
        flush();
        continue;
      }
      run.push(`${num(px(x))},${num(py(y))}`);
    }
    flush();
    for (const [x, y] of pts) if (Number.isFinite(x) && Number.isFinite(y)) body.push(markerSvg(marker, px(x), py(y), color));
    const ly = top + 10 + i * LEGEND_ROW;
    legend.push(`<line x1="${right + 12}" y1="${ly}" x2="${right + 40}" y2="${ly}" stroke="${color}" stroke-width="2"${dashAttr}/>`);
    legend.push(markerSvg(marker, right + 26, ly, color));
    legend.push(`<text x="${right + 46}" y="${ly + 4}">${escapeXml(s.name)}</text>`);
  });
  body.push('</g>', ...legend);
  return svgDocument(f, spec.title, spec.xLabel, spec.yLabel, body);
}

export interface BarPlotSpec {
  title: string;
  yLabel: string;
  xLabel?: string;
  /** Category labels along the x axis (e.g. methods). */
  groups: string[];
  /** One bar per series inside each group (e.g. spans). */
  series: string[];
  /** values[g][s]; a non-finite value draws no bar. */
  values: number[][];
  yDomain?: [number, number];
}

/** Grouped bars from a zero baseline, with value ticks and a legend. */
export function barPlot(spec: BarPlotSpec): string {
  if (spec.values.length !== spec.groups.length || spec.values.some((row) => row.length !== spec.series.length)) {
    throw new RangeError(`barPlot: values must be ${spec.groups.length} rows (groups) of ${spec.series.length} values (series)`);
  }
  const rotate = spec.groups.some((g) => g.length > 12);
  const f = frame(spec.series.length, rotate ? 40 : 0);
  const { left, right, top, bottom } = f.plot;
  const [y0, y1] = domain(spec.values.flat(), spec.yDomain, true);
  const py = (y: number) => bottom - ((Math.min(Math.max(y, y0), y1) - y0) / (y1 - y0)) * (bottom - top);
  const body = axes(f, niceTicks(y0, y1), py);
  const base = py(Math.min(Math.max(0, y0), y1));
  const gw = (right - left) / Math.max(1, spec.groups.length);
  const bw = (gw * 0.8) / Math.max(1, spec.series.length);
  spec.groups.forEach((g, gi) => {
    spec.series.forEach((_, si) => {
      const v = spec.values[gi]![si]!;
      if (!Number.isFinite(v)) return;
      const x = left + gi * gw + gw * 0.1 + si * bw;
      const yv = py(v);
      body.push(`<rect x="${num(x)}" y="${num(Math.min(yv, base))}" width="${num(Math.max(bw - 1, 1))}" height="${num(Math.abs(base - yv))}" fill="${COLORS[si % COLORS.length]}"/>`);
    });
    const cx = left + gi * gw + gw / 2;
    body.push(
      rotate
        ? `<text transform="translate(${num(cx)} ${bottom + 14}) rotate(-30)" text-anchor="end">${escapeXml(g)}</text>`
        : `<text x="${num(cx)}" y="${bottom + 16}" text-anchor="middle">${escapeXml(g)}</text>`,
    );
  });
  spec.series.forEach((s, si) => {
    const ly = top + 10 + si * LEGEND_ROW;
    body.push(`<rect x="${right + 12}" y="${ly - 6}" width="14" height="12" fill="${COLORS[si % COLORS.length]}"/>`);
    body.push(`<text x="${right + 32}" y="${ly + 4}">${escapeXml(s)}</text>`);
  });
  return svgDocument(f, spec.title, spec.xLabel ?? '', spec.yLabel, body);
}
