// A compression method of your own in a few lines: a scorer (one formula per KV head) and a budget
// policy, registered under a name, then used like any built-in method.
import { getPress, methodNames, openModel, perHead, registerMethod, uniformBudget, type Scorer } from 'kvlab';

const firstTokens: Scorer = {
  summary: 'keep the earliest context tokens',
  score: (ctx) => perHead(ctx, ({ positions }) => Array.from(positions, (p) => -p)),
};
registerMethod('first-tokens', firstTokens, uniformBudget);
console.log(`registered methods include first-tokens: ${methodNames().includes('first-tokens')}`);

const lm = openModel();
const session = lm.openContext('Document:\nThe code of tean is 4242. The code of ruko is 1717. The code of vela is 9090.');
const report = session.compress(getPress('first-tokens'), 0.5);
console.log(`first-tokens: kept ${report.perLayerKept[0]!.toFixed(2)} of the context in layer 0 (${getPress('first-tokens').describe})`);
