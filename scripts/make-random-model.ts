import { RANDOM_SHAPES, writeRandomCheckpoint } from '../src/model/random-checkpoint.ts';

const [shape, dir] = process.argv.slice(2);
if (!shape || !dir || !Object.hasOwn(RANDOM_SHAPES, shape)) {
  process.stderr.write(`usage: npx tsx scripts/make-random-model.ts <${Object.keys(RANDOM_SHAPES).join('|')}> <outDir>\n`);
  process.exit(2);
}
let shownPercent = -1;
writeRandomCheckpoint(shape, dir, {
  onProgress(done, total) {
    const percent = Math.floor((100 * done) / total);
    if (percent === shownPercent) return;
    shownPercent = percent;
    process.stderr.write(`\rwriting ${dir}: ${percent}%`);
  },
});
process.stderr.write('\n');
process.stdout.write(`wrote ${dir}\n`);
