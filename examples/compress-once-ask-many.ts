// Compress a context once with KVzip, then ask it several questions: each answer is generated on the
// compressed cache, and the cache is the same for every question.
import { getPress, openModel } from 'kvlab';

const lm = openModel(); // the embedded kvlab-tiny-chat; openModel('/path/to/hf-folder') for another
const document = [
  'Document:',
  'The code of tean is 4242. The river tean runs past the old mill.',
  'The code of ruko is 1717. Ruko is the name of the northern tower.',
  'The code of vela is 9090. Vela is a small town by the lake.',
].join('\n');

const session = lm.openContext(document, { queryTemplate: 'Question: {query}' });
const report = session.compress(getPress('kvzip'), 0.3);
const kept = Math.round(report.contextTokens * (report.perLayerKept.reduce((a, b) => a + b, 0) / report.perLayerKept.length));
console.log(`kept ${kept} of ${report.contextTokens} context tokens (${report.contextBytesFull} -> ${report.contextBytesKept} bytes of KV)`);

for (const question of ['What is the code of tean?', 'What is the code of ruko?', 'What is the code of vela?']) {
  const answer = await session.ask(question, { maxTokens: 12 });
  console.log(`Q: ${question}\nA: ${answer.text}`);
}
