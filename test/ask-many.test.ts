import assert from 'node:assert/strict';
import { test } from 'node:test';
import { askEach } from '../src/engine/context-session.ts';
import { sweepRatios } from '../src/eval/method-sweep.ts';
import { getPress } from '../src/press/registry.ts';
import { loadAddon } from '../src/tensor/native.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
import { qaRows, tinyModel } from './helpers/tiny-model.ts';

/** Every row's keys and values, per layer and head, as one array (what the cache holds). */
function snapshot(cache: import('../src/cache/kv-cache.ts').KvCache): number[][] {
  const out: number[][] = [];
  cache.forEachHead((s) => out.push([s.len, ...s.pos.slice(0, s.len), ...s.keys(), ...s.values()]));
  return out;
}

async function compare(lm: ReturnType<typeof tinyModel>, rows: number, methods: string[], ratios: number[]): Promise<number> {
  let compared = 0;
  for (const row of qaRows().slice(0, rows)) {
    for (const method of methods) {
      for (const point of sweepRatios(lm, row.context, getPress(method), ratios)) {
        const before = snapshot(point.session.cache);
        const together = await point.session.askMany(row.questions, { maxTokens: 12 });
        assert.deepEqual(snapshot(point.session.cache), before, 'the shared cache is unchanged');
        assert.equal(together.length, row.questions.length);
        for (const [i, q] of row.questions.entries()) {
          const alone = await point.session.ask(q, { maxTokens: 12 });
          assert.deepEqual(together[i]!.tokens, alone.tokens, `${row.id} ${method}@${point.ratio} question ${i}`);
          assert.equal(together[i]!.text, alone.text);
          compared++;
        }
      }
    }
  }
  return compared;
}

test('askMany decodes the questions together and answers each as ask() does alone, leaving the compressed cache as it was (native)', { skip: !loadAddon() && 'the native addon is not built' }, async () => {
  const compared = await compare(tinyModel(selectBackend()), 3, ['snapkv', 'kvzip'], [1, 0.3]);
  assert.ok(compared >= 40, `${compared} answers compared`);
});

test('askMany answers as ask() does on the reference backend too', async () => {
  const compared = await compare(tinyModel(), 1, ['snapkv'], [0.3]);
  assert.ok(compared >= 4, `${compared} answers compared`);
});

test('askEach decodes queries on different compressed sessions together, each answered as on its session alone', { skip: !loadAddon() && 'the native addon is not built' }, async () => {
  const lm = tinyModel(selectBackend());
  const row = qaRows()[4]!;
  const sessions = [...sweepRatios(lm, row.context, getPress('knorm'), [1, 0.5, 0.3, 0.1])].map((p) => p.session);
  const asks = sessions.flatMap((session, i) => row.questions.slice(i % 2, (i % 2) + 3).map((query) => ({ session, query })));
  const before = sessions.map((s) => snapshot(s.cache));
  const together = await askEach(asks, { maxTokens: 12 });
  assert.deepEqual(sessions.map((s) => snapshot(s.cache)), before, 'every session\'s cache is unchanged');
  for (const [i, { session, query }] of asks.entries()) assert.deepEqual(together[i]!.tokens, (await session.ask(query, { maxTokens: 12 })).tokens, `ask ${i}`);
  assert.equal(together.length, asks.length);
  assert.ok(asks.length >= 8, `${asks.length} asks`);
  await assert.rejects(askEach([{ session: sessions[0]!, query: 'x' }, { session: tinyModel().openContext('Another model.'), query: 'x' }]), /same loaded model/);
});
