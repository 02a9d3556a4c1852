import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { collectInspection } from '../src/inspect/collect.ts';
import { renderInspectPage } from '../src/inspect/render.ts';
import { servePage } from '../src/inspect/serve-page.ts';
import { getPress } from '../src/press/registry.ts';
import { selectBackend } from '../src/tensor/select-backend.ts';
import { qaRows, tinyModel } from './helpers/tiny-model.ts';

// Chromium from the system's packages (Debian: apt-get install chromium); playwright-core downloads nothing.
const chromiumPath = [process.env.KVLAB_CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p): p is string => !!p && existsSync(p));
const skip = chromiumPath ? false : 'no chromium installed (apt-get install chromium, or set KVLAB_CHROMIUM); the inspector browser test is skipped';
const outDir = fileURLToPath(new URL('../out/test/inspect-browser/', import.meta.url));

const lm = tinyModel(selectBackend());
const context = qaRows()[0]!.context.split('\n').slice(0, 5).join('\n');
const methods = ['kvzip', 'snapkv'];

/**
 * What `kvlab compress` keeps (session.compress: its own prefill and scoring of one method, the budget
 * applied to the cache), read back from the cache's kept positions. Returns, per context token, how many (layer, head) pairs hold it.
 */
function engineKeptCounts(method: string, ratio: number, head?: { l: number; h: number }): number[] {
  const session = lm.openContext(context);
  session.compress(getPress(method), ratio);
  const { start, end } = session.context;
  const counts = new Array<number>(end - start).fill(0);
  session.cache.forEachHead((store, l, h) => {
    if (head && (head.l !== l || head.h !== h)) return;
    for (const p of store.pos.subarray(0, store.len)) if (p >= start && p < end) counts[p - start]!++;
  });
  return counts;
}

test('inspector page in Chromium: shown kept fractions and counts equal the engine at the opening ratio, a focused head and a moved slider', { skip, timeout: 240_000 }, async (t) => {
  const { chromium } = await import('playwright-core');
  const ins = await collectInspection(lm, context, { methods, ratio: 0.3 });
  const page = await servePage(renderInspectPage(ins.data), '{}', 0);
  const browser = await chromium.launch({ executablePath: chromiumPath as string, args: ['--no-sandbox'] });
  try {
    const tab = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const errors: string[] = [];
    tab.on('pageerror', (e) => errors.push(e.message));
    await tab.goto(page.url);
    await tab.waitForSelector('body[data-ready="true"]', { timeout: 30_000 });
    const { start: P, end } = ins.data.context;
    const T = end - P;
    const pairs = ins.data.layers * ins.data.kvHeads;
    const column = (i: number) => tab.locator('section.method').nth(i);
    const shown = (i: number) =>
      column(i)
        .locator('.tok[data-kept]')
        .evaluateAll((els) => els.map((e) => [Number((e as HTMLElement).dataset.pos), Number((e as HTMLElement).dataset.kept), Number((e as HTMLElement).dataset.of)]));
    const keptPairs = async (i: number) => Number(await column(i).locator('.kept-pairs').textContent());

    // Opening ratio: every token's kept fraction, in both columns, is the engine's.
    for (const [i, method] of methods.entries()) {
      const engine = engineKeptCounts(method, 0.3);
      const tokens = await shown(i);
      assert.equal(tokens.length, T, `${method}: one shaded token per context row`);
      for (const [pos, kept, of] of tokens) assert.deepEqual([kept, of], [engine[pos! - P], pairs], `${method} token ${pos} at 0.3`);
      assert.equal(await keptPairs(i), engine.reduce((a, b) => a + b, 0), `${method} kept pairs at 0.3`);
      // The title a person reads says the same.
      const title = await column(i).locator(`.tok[data-pos="${P + 3}"]`).getAttribute('title');
      assert.equal(title, `token ${P + 3}: kept by ${engine[3]} of ${pairs} (layer, head) pairs`);
    }

    // Clicking a grid cell shades the text by that head alone.
    await column(0).locator('rect.cell[data-layer="1"][data-head="0"]').click();
    const headOnly = engineKeptCounts('kvzip', 0.3, { l: 1, h: 0 });
    for (const [pos, kept, of] of await shown(0)) assert.deepEqual([kept, of], [headOnly[pos! - P], 1], `kvzip layer 1 head 0, token ${pos}`);
    await tab.keyboard.press('Escape');
    assert.equal((await shown(0))[0]![2], pairs, 'Escape returns to all pairs');

    // The slider, moved by keyboard (ten steps of 0.01 down), then set directly: counts follow the engine.
    await tab.locator('#ratio').focus();
    for (let k = 0; k < 10; k++) await tab.keyboard.press('ArrowLeft');
    assert.equal(await tab.locator('#ratio-value').textContent(), '0.20');
    for (const ratio of [0.2, 0.55]) {
      if (ratio !== 0.2) await tab.locator('#ratio').fill(String(ratio));
      for (const [i, method] of methods.entries()) {
        const engine = engineKeptCounts(method, ratio);
        assert.equal(await keptPairs(i), engine.reduce((a, b) => a + b, 0), `${method} kept pairs at ${ratio}`);
        const kept = (await shown(i)).map(([, k]) => k);
        assert.deepEqual(kept, engine, `${method} kept fractions at ${ratio}`);
      }
    }
    assert.notEqual(await keptPairs(0), engineKeptCounts('kvzip', 0.3).reduce((a, b) => a + b, 0), 'the count moved with the slider');
    assert.deepEqual(errors, [], 'no script errors on the page');

    mkdirSync(outDir, { recursive: true });
    await tab.locator('#ratio').fill('0.3');
    const shot = join(outDir, 'inspector-1280x800.png');
    await tab.screenshot({ path: shot });
    assert.ok(existsSync(shot));
    t.diagnostic(`screenshot: ${shot}`);
  } finally {
    await browser.close();
    await page.close();
  }
});
