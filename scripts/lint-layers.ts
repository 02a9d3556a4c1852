/**
 * The layer check: a module of src/ imports only from its own layer or the layers below it. The order is
 * written once, here; folders on one rank (eval, bench, server, inspect, queue) may import each other. Imports are read with
 * TypeScript's own pre-processor, so type-only, re-exported and dynamic imports all count.
 * Run as `npm run lint:layers` (part of `npm test`); prints one line per upward import and exits 1.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

/** Lowest first. */
export const LAYERS: readonly (readonly string[])[] = [['tensor'], ['cache'], ['model'], ['press'], ['engine'], ['eval', 'bench', 'server', 'inspect', 'queue'], ['cli', 'api']];

export const LAYER_ORDER = LAYERS.map((rank) => rank.join('|')).join(' -> ');

function rankOf(folder: string): number {
  return LAYERS.findIndex((rank) => rank.includes(folder));
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(path);
    return /\.(ts|mts|cts)$/.test(e.name) && !e.name.endsWith('.d.ts') ? [path] : [];
  });
}

/** Every violation under srcRoot, one line each: the file and line, the import, and why it is refused. */
export function layerViolations(srcRoot: string): string[] {
  const root = resolve(srcRoot);
  const problems: string[] = [];
  for (const file of sourceFiles(root).sort()) {
    const rel = relative(root, file).split(sep);
    const name = `${relative(process.cwd(), file)}`;
    if (rel.length < 2) {
      problems.push(`${name}: lies outside every layer folder (${LAYER_ORDER})`);
      continue;
    }
    const own = rankOf(rel[0]!);
    if (own < 0) {
      problems.push(`${name}: folder "${rel[0]}" is not in the layer order (${LAYER_ORDER}); add it to LAYERS in scripts/lint-layers.ts`);
      continue;
    }
    const text = readFileSync(file, 'utf8');
    for (const ref of ts.preProcessFile(text, true, true).importedFiles) {
      if (!ref.fileName.startsWith('.')) continue;
      const target = relative(root, resolve(dirname(file), ref.fileName)).split(sep);
      if (target[0] === '..' || target.length < 2) continue;
      const theirs = rankOf(target[0]!);
      if (theirs > own) {
        const line = text.slice(0, ref.pos).split('\n').length;
        problems.push(`${name}:${line}: ${rel[0]} imports ${target.join('/')}, from ${target[0]}, a layer above it (${LAYER_ORDER})`);
      }
    }
  }
  return problems;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = process.argv[2] ?? fileURLToPath(new URL('../src', import.meta.url));
  const problems = layerViolations(root);
  for (const p of problems) process.stderr.write(`${p}\n`);
  if (problems.length) process.exit(1);
  process.stdout.write(`layers: ${sourceFiles(root).length} modules of ${relative(process.cwd(), root) || '.'} import only downwards (${LAYER_ORDER})\n`);
}
