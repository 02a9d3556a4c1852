import { tinyModel, qaRows } from './test/helpers/tiny-model.ts';
import { selectBackend } from './src/tensor/select-backend.ts';
import { qaUnit } from './src/eval/qa-eval.ts';
import { getPress } from './src/press/registry.ts';
const lm = tinyModel(selectBackend());
let last = performance.now(); let worst = 0;
const t = setInterval(() => { const n = performance.now(); worst = Math.max(worst, n - last); last = n; }, 10);
for (const m of ['snapkv', 'streamingllm']) {
  const t0 = performance.now(); worst = 0; last = performance.now();
  const u = await qaUnit(lm, qaRows()[0]!, getPress(m), { ratios: [1, 0.5], queryTemplate: 'Question: {query}', maxTokens: 4 });
  console.log(m, 'unit ms', (performance.now() - t0).toFixed(0), 'worst block ms', worst.toFixed(0), u.samples.length, 'samples', lm.backend?.name);
}
clearInterval(t);
