import type { Command } from 'commander';
import { ARCH_FAMILIES } from '../../bench/arch-families.ts';
import { PRECISIONS, runArchVerify } from '../../bench/arch-verify.ts';
import { writeAtomic } from '../../eval/write-outputs.ts';
import { selectBackend } from '../../tensor/select-backend.ts';
import { listOption } from '../common.ts';

export function registerVerifyArch(program: Command): void {
  program
    .command('verify-arch')
    .description('every supported architecture against llama.cpp (node-llama-cpp) on the same random weights; prints JSON, exits 1 on a disagreement (npm run verify:arch installs the peer)')
    .option('--families <names>', ARCH_FAMILIES.map((f) => f.name).join(', '), listOption)
    .option('--precisions <names>', PRECISIONS.map((p) => p.name).join(', '), listOption)
    .option('--peer-dir <dir>', 'folder whose node_modules holds node-llama-cpp', '.peer')
    .option('--threads <n>', 'threads for llama.cpp', String(2))
    .option('-o, --out <file>', 'also write the JSON here')
    .action(async (o) => {
      const threads = Number(o.threads);
      if (!Number.isInteger(threads) || threads < 1) throw new RangeError(`--threads must be a positive integer, got "${o.threads}"`);
      const { passed, report } = await runArchVerify({
        peerDir: o.peerDir,
        families: o.families,
        precisions: o.precisions,
        threads,
        backend: selectBackend,
        log: (line) => process.stderr.write(`verify-arch: ${line}\n`),
      });
      const text = `${JSON.stringify(report, null, 2)}\n`;
      if (o.out) writeAtomic(o.out, text);
      process.stdout.write(text);
      if (!passed) process.exitCode = 1;
    });
}
