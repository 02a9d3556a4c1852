import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

// The package as a user gets it: `npm pack`, the tarball installed into an empty project (the addon built
// there by its install script), the API used from a strict TypeScript file, the examples run, the CLI run.
const repo = fileURLToPath(new URL('..', import.meta.url));
const tsc = join(repo, 'node_modules', 'typescript', 'bin', 'tsc');
const scratch = mkdtempSync(join(tmpdir(), 'kvlab-package-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

const npm = (args: string[], cwd: string) =>
  execFileSync('npm', [...args, '--no-audit', '--no-fund', '--loglevel=error'], { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

test('npm pack holds what a user needs; installed in an empty project, the typed API, the examples and the CLI run', { timeout: 900_000 }, () => {
  const packed = JSON.parse(npm(['pack', '--json', '--pack-destination', scratch], repo)) as { filename: string; files: { path: string }[] }[];
  const files = packed[0]!.files.map((f) => f.path);
  for (const needed of ['bin/kvlab.js', 'dist/api/index.js', 'dist/api/index.d.ts', 'dist/cli/main.js', 'native/binding.gyp', 'models/kvlab-tiny-chat/model.safetensors', 'data/dev/qa.jsonl', 'dist/inspect/browser/page.js']) {
    assert.ok(files.includes(needed), `the tarball holds ${needed}`);
  }
  for (const prefix of ['test/', 'results/', 'src/', 'native/build/', 'organism/']) {
    assert.equal(files.filter((f) => f.startsWith(prefix)).length, 0, `the tarball holds nothing under ${prefix}`);
  }

  const app = join(scratch, 'app');
  cpSync(join(repo, 'examples'), join(app, 'examples'), { recursive: true });
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'kvlab-user', private: true, type: 'module' }));
  npm(['install', '--prefer-offline', join(scratch, packed[0]!.filename), '@types/node@20', 'openai@6'], app);

  writeFileSync(
    join(app, 'tsconfig.json'),
    JSON.stringify({
      // skipLibCheck as `tsc --init` sets it: a dependency's own declaration files are not the user's to check.
      compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, skipLibCheck: true, outDir: 'out', types: ['node'] },
      include: ['examples/*.ts'],
    }),
  );
  try {
    execFileSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: app, encoding: 'utf8' });
  } catch (e) {
    assert.fail(`the examples do not typecheck against the installed package:\n${(e as { stdout?: string }).stdout ?? e}`);
  }
  const examples = readdirSync(join(app, 'examples')).filter((f) => f.endsWith('.ts'));
  assert.ok(examples.length >= 3, 'three examples');
  const outputs = new Map<string, string>();
  for (const ex of examples) {
    outputs.set(ex, execFileSync(process.execPath, [join(app, 'out', ex.replace(/\.ts$/, '.js'))], { cwd: app, encoding: 'utf8', timeout: 300_000 }));
  }
  const ask = outputs.get('compress-once-ask-many.ts')!;
  assert.match(ask, /kept \d+ of \d+ context tokens/);
  assert.equal(ask.match(/^Q: /gm)?.length, 3, 'three questions answered on one compressed context');
  assert.match(outputs.get('custom-press.ts')!, /first-tokens: kept 0\.\d+/);
  assert.match(outputs.get('custom-press.ts')!, /registered methods include first-tokens/);
  assert.match(outputs.get('openai-client.ts')!, /answer from kvlab serve: /);

  const demo = execFileSync('npx', ['kvlab', 'demo'], { cwd: app, encoding: 'utf8', timeout: 300_000 });
  assert.match(demo, /-- KVzip, 30% of the context kept/);
});
