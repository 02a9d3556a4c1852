import { writeRandomCheckpoint, BENCH_SHAPES } from '../src/bench/random-checkpoint.ts';

const [shape, dir] = process.argv.slice(2);
if (!shape || !dir) {
  process.stderr.write(`usage: tsx scripts/make-random-model.ts <${Object.keys(BENCH_SHAPES).join('|')}> <outDir>\n`);
  process.exit(2);
}
writeRandomCheckpoint(shape, dir);
process.stdout.write(`wrote ${dir}\n`);
