import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { layerViolations } from '../scripts/lint-layers.ts';

const script = fileURLToPath(new URL('../scripts/lint-layers.ts', import.meta.url));
const src = fileURLToPath(new URL('../src', import.meta.url));

function tree(files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'kvlab-layers-'));
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  }
  return root;
}

const lintCli = (root: string) => spawnSync(process.execPath, ['--import', 'tsx', script, root], { encoding: 'utf8' });

test('the source tree imports only downwards', () => {
  assert.deepEqual(layerViolations(src), []);
});

test('a planted upward import is caught, with its file and line, by the function and by the command', () => {
  const root = tree({
    'press/scorer.ts': "import { KvCache } from '../cache/kv-cache.ts';\nimport type { Session } from '../engine/session.ts';\nexport const x = 1;\n",
    'engine/session.ts': "import { x } from '../press/scorer.ts';\nexport type Session = typeof x;\n",
    'cache/kv-cache.ts': 'export class KvCache {}\n',
  });
  try {
    const problems = layerViolations(root);
    assert.equal(problems.length, 1, problems.join('\n'));
    assert.match(problems[0]!, /press[/\\]scorer\.ts:2: press imports engine\/session\.ts, from engine, a layer above it/);
    const run = lintCli(root);
    assert.equal(run.status, 1);
    assert.match(run.stderr, /press imports engine\/session\.ts/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('re-exports and dynamic imports count; sibling folders of one rank and relative imports inside a layer do not', () => {
  const root = tree({
    'model/a.ts': "export type { T } from '../eval/t.ts';\n",
    'tensor/b.ts': "export const load = () => import('../cli/main.ts');\n",
    'eval/t.ts': "import { y } from '../bench/y.ts';\nexport type T = number;\nexport const z = y;\n",
    'bench/y.ts': "import { w } from './w.ts';\nexport const y = w;\n",
    'bench/w.ts': 'export const w = 2;\n',
    'cli/main.ts': "import '../eval/t.ts';\n",
  });
  try {
    const problems = layerViolations(root);
    assert.equal(problems.length, 2, problems.join('\n'));
    assert.match(problems.join('\n'), /model imports eval\/t\.ts/);
    assert.match(problems.join('\n'), /tensor imports cli\/main\.ts/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a folder outside the layer order is refused by name', () => {
  const root = tree({ 'util/x.ts': 'export const x = 1;\n' });
  try {
    const [problem] = layerViolations(root);
    assert.match(problem ?? '', /folder "util" is not in the layer order/);
    assert.equal(lintCli(root).status, 1);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
