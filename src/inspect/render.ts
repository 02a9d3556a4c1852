import { readFileSync } from 'node:fs';
import type { InspectData } from './inspect-data.ts';

/** The page's scripts in the order they run: page.js uses grid.js and select.js. */
const SCRIPTS = ['grid.js', 'select.js', 'page.js'];

function browserFile(name: string): string {
  return readFileSync(new URL(`./browser/${name}`, import.meta.url), 'utf8');
}

/**
 * The browser modules joined into one inline module script: their own `import` lines are dropped and
 * `export` keywords removed, so the page needs no other file and no network.
 */
function inlineScript(): string {
  return SCRIPTS.map((name) => {
    const lines = browserFile(name).split('\n').filter((line) => !/^import .* from '\.\/[\w.-]+\.js';$/.test(line));
    const body = lines.map((line) => line.replace(/^export (function|const|let|class|async function) /, '$1 ')).join('\n');
    if (/^(import|export)\b/m.test(body)) throw new Error(`inspect/browser/${name}: an import or export form the page inliner does not handle`);
    return `// ---- ${name}\n${body}`;
  }).join('\n');
}

/** JSON placed inside a <script> element: `<` escaped so no text in the data can close the element. */
function scriptJson(value: unknown): string {
  return JSON.stringify(value).replace(/</g, '\\u003c').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/**
 * The inspector as one self-contained HTML page (styles, scripts and data inline): what `kvlab inspect`
 * serves and writes with --html, and what a server can return for a stored context.
 */
export function renderInspectPage(data: InspectData): string {
  const methods = data.methods.map((m) => m.name).join(' vs ');
  const T = data.context.end - data.context.start;
  const title = `kvlab inspect: ${methods}`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<style>
${browserFile('page.css')}
</style>
</head>
<body>
<header>
  <h1>kvlab inspect</h1>
  <span class="meta">${escapeHtml(`${data.model} · ${data.layers} layers x ${data.kvHeads} KV heads · ${T} compressible tokens of ${data.tokens.length} · protection: ${data.protectLabel}`)}</span>
  <label class="control" for="ratio">ratio kept
    <input id="ratio" type="range" min="0" max="1" step="0.01" value="${data.ratio}" aria-describedby="ratio-help">
    <output id="ratio-value" for="ratio">${data.ratio.toFixed(2)}</output>
  </label>
  <button id="clear-focus" type="button" disabled>all heads (Esc)</button>
  <label class="control" id="diff-control" for="diff-threshold" hidden>differ by at least
    <input id="diff-threshold" type="number" min="1" max="100" step="1" value="50">% of pairs
  </label>
  <div class="notes">
    <span id="ratio-help">keep sets re-selected from the stored scores with the engine's top-k and budget policy</span>
    <span id="focus-note"></span>
    <span id="diff-note"></span>
    <span class="legend" aria-hidden="true"><span class="swatch" style="background: rgba(37, 99, 235, 0.08)"></span>evicted
      <span class="swatch" style="background: rgba(37, 99, 235, 0.63)"></span>kept by every head
      <span class="swatch" style="background: repeating-linear-gradient(45deg, #e5e7eb 0 3px, #f3f4f6 3px 6px)"></span>never evicted
      <span class="swatch" style="box-shadow: inset 0 -3px 0 #ea580c"></span>methods differ</span>
  </div>
  <div id="details" aria-live="polite"></div>
</header>
<main id="methods"></main>
<script type="application/json" id="kvlab-data">${scriptJson(data)}</script>
<script type="module">
${inlineScript()}
</script>
</body>
</html>
`;
}
